"""An HDFS outage loses nothing: stop the DataNode and NameNode for 30 s while a sender streams.

The real collector lands into the real local HDFS; the real speed job reads
``hdfs://`` and the real API serves the merged view.  While messages stream
over UDP, both HDFS daemons are stopped for 30 s and started again (data
kept).  Afterwards every accepted message is in HDFS exactly once — read back
through WebHDFS, not from the collector's bookkeeping — and counted exactly
once by the merged view.
"""

from __future__ import annotations

import dataclasses
import socket
import threading
import time

import orjson
import pytest
import requests

from healthmon import hdfs_cluster
from healthmon.landing import landing_for, raw_dir
from healthmon.schema import encode
from healthmon.state import read_state
from tests.procs import start_healthmon, stop_process, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.spark, pytest.mark.hdfs]

OUTAGE_S = 30
RATE = 100  # messages per second


def landed_ids(settings) -> list[str]:
    """Message ids of every raw line in HDFS, read through WebHDFS."""
    store = landing_for(settings)
    ids = []
    for f in store.list_files(raw_dir("health")):
        ids += [orjson.loads(line)["id"] for line in store.read(f.path).splitlines()]
    return ids


def test_outage_of_namenode_and_datanode_loses_nothing_and_counts_once(local_hdfs, tmp_path, free_udp_port, free_tcp_port):
    cluster, env = local_hdfs
    env = {**env, "HEALTHMON_DATA_DIR": str(tmp_path / "var"), "HEALTHMON_UDP_PORT": str(free_udp_port),
           "HEALTHMON_API_PORT": str(free_tcp_port), "HEALTHMON_LANDING": f"{env['HEALTHMON_LANDING']}-outage"}
    client_settings = dataclasses.replace(cluster, landing=env["HEALTHMON_LANDING"])
    api = f"http://127.0.0.1:{free_tcp_port}"
    state_dir = tmp_path / "var" / "state"
    procs = [start_healthmon([part], env) for part in ("collect", "speed", "serve")]
    sent = 0
    stop_sending = threading.Event()

    def sender() -> None:
        nonlocal sent
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        while not stop_sending.is_set():
            now = time.time()
            sock.sendto(encode({"service": f"svc-{sent % 7}", "ts": now, "cpu_pct": 50, "ram_total_gb": 8, "ram_free_gb": 4,
                                "disk_total_gb": 100, "disk_free_gb": 50}), ("127.0.0.1", free_udp_port))
            sent += 1
            time.sleep(1 / RATE)

    try:
        wait_until(lambda: requests.get(f"{api}/healthz", timeout=1).ok, 60, "API up")
        wait_until(lambda: (read_state(state_dir, "speed") or {}).get("state") == "streaming", 120, "speed job")
        thread = threading.Thread(target=sender)
        thread.start()
        time.sleep(5)
        hdfs_cluster.stop_datanode(cluster)
        hdfs_cluster.stop_namenode(cluster)
        time.sleep(OUTAGE_S)
        collector = read_state(state_dir, "collector-c1")
        assert collector["spooled_segments"] > 0, "the outage must have sent segments to the spool"
        hdfs_cluster.start_namenode(cluster)
        hdfs_cluster.start_datanode(cluster)
        hdfs_cluster.wait_ready(cluster, timeout=180)
        time.sleep(5)
        stop_sending.set()
        thread.join()

        def collector_done() -> bool:
            c = read_state(state_dir, "collector-c1")
            return c["received"] == sent and c["pending_segments"] == 0 and c["open_segments"] == 0

        wait_until(collector_done, 120, "the collector shipped its spool")
        counters = read_state(state_dir, "collector-c1")
        assert counters["accepted"] == sent and counters["shipped_segments"] == counters["spooled_segments"] > 0
        ids = landed_ids(client_settings)
        assert len(ids) == len(set(ids)) == sent  # in HDFS exactly once

        def merged_count() -> int:
            now = time.time()
            answer = requests.get(f"{api}/api/v1/summary", params={"from": now - 3 * 3600, "to": now + 600}, timeout=5).json()
            return sum(row["count"] for row in answer["services"])

        wait_until(lambda: merged_count() == sent, 240, "every message counted by the merged view")
        time.sleep(3)
        assert merged_count() == sent  # and not more, once the speed job is idle
    finally:
        stop_sending.set()
        for proc in procs:
            stop_process(proc)
        if hdfs_cluster.daemon_pid(cluster, "namenode") is None or hdfs_cluster.daemon_pid(cluster, "datanode") is None:
            hdfs_cluster.up(cluster)  # leave the shared cluster running for the other tests
