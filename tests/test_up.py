"""``healthmon up --mock``: the whole pipeline from one command, stopped cleanly by SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest
import requests

from healthmon import hdfs_cluster
from healthmon.config import load_settings
from healthmon.landing import landing_for
from tests.procs import free_hdfs_ports, free_port, healthmon_env, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.spark]


@pytest.mark.parametrize("landing", ["file", pytest.param("hdfs", marks=pytest.mark.hdfs)])
def test_up_with_mocks_serves_the_mock_services_and_stops_cleanly(tmp_path, landing):
    udp_port, api_port = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_STREAM)
    settings = {"HEALTHMON_DATA_DIR": str(tmp_path / "var"), "HEALTHMON_UDP_PORT": str(udp_port), "HEALTHMON_API_PORT": str(api_port)}
    if landing == "hdfs":  # what `make run` does: the local HDFS, started by `up` itself
        ports = free_hdfs_ports()
        settings.update({f"HEALTHMON_{name.upper()}": str(port) for name, port in ports.items()})
        settings["HEALTHMON_LANDING"] = f"hdfs://127.0.0.1:{ports['hdfs_rpc_port']}/healthmon"
    env = healthmon_env(settings)
    log = open(tmp_path / "up.log", "w+b")  # noqa: SIM115 - read back below
    proc = subprocess.Popen([sys.executable, "-m", "healthmon.cli", "up", "--mock", "--mock-services", "3"], env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    api = f"http://127.0.0.1:{api_port}"
    try:
        def services() -> set[str]:
            answer = requests.get(f"{api}/api/v1/summary", timeout=2).json()
            return {row["service"] for row in answer["services"] if row["count"] > 0}

        wait_until(lambda: {"api-gateway", "auth", "billing"} <= services(), 120, "mock services in /api/v1/summary")

        def disks() -> set[str]:
            return {d["source"] for d in requests.get(f"{api}/api/v1/disks", timeout=2).json()["disks"]}

        # The mock drives, and this machine's own disks measured by the agent (bcc, libbpf or diskstats).
        wait_until(lambda: "mock" in disks() and len(disks()) >= 2, 120, "mock drives and this machine's disks in /api/v1/disks")
        wait_until(lambda: requests.get(f"{api}/api/v1/pipeline", timeout=2).json()["batch"]["last_builds"], 60, "a batch build")
        store = landing_for(load_settings(environ=env))
        landed = store.list_files("raw/type=health")  # through WebHDFS when the landing store is HDFS
        assert landed and all(f.path.endswith(".jsonl") and f.size > 0 for f in landed)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    log.seek(0)
    output = log.read().decode(errors="replace")
    assert f"healthmon is up: dashboard at {api}/" in output
    for part in ("collector", "speed", "scheduler", "api", "agent", "mock"):
        assert f"{part} stopped (rc=0)" in output, output[-3000:]
    if landing == "file":  # the collector published what it held: no hidden segment is left behind
        assert not [p for p in (tmp_path / "var" / "landing").rglob("_*") if p.is_file()]
    else:
        assert "stopping the local HDFS" in output
        assert not hdfs_cluster.status(load_settings(environ=env)).namenode_pid
