"""Drive health: a degrading mock drive is flagged, healthy ones are not (real DuckDB views, real API server)."""

from __future__ import annotations

import math
import socket
import time

import pytest
import requests

from healthmon.config import load_settings
from healthmon.schema import encode
from healthmon.sketch import LatencySketch
from healthmon.state import read_state
from mock_services.drives import drive_messages, make_drives
from serving.disk_health import judge
from tests.procs import start_healthmon, stop_process, wait_until

SEED = 3


def fleet_history(now: float) -> list[dict]:
    """Six drives; every minute of the last 2 h.  The degrading drive is healthy until 20 min ago, then 64x its p99 tail."""
    drives = make_drives(6, SEED, "degrading_drive")
    messages = []
    for minute in range(120, 0, -1):
        ts = now - minute * 60 + 30
        elapsed = 1800.0 if minute <= 20 else 0.0  # tail_growth: 1x at 0 s, 64x from 18 min on
        messages += drive_messages(drives, SEED, elapsed + minute * 1e-3, ts, 60.0)
    return messages


def test_judge_compares_with_own_baseline_and_fleet():
    settings = load_settings(environ={})
    recent = {("h", "a", "read"): [(100, 90), (200, 10)], ("h", "b", "read"): [(100, 99), (101, 1)],
              ("h", "c", "read"): [(100, 99), (101, 1)]}
    verdicts = {v["device"]: v for v in judge(recent, {("h", "a", "read"): [(100, 100)]}, settings)}
    assert verdicts["a"]["status"] == "degraded" and "own baseline" in verdicts["a"]["reason"] and "fleet median" in verdicts["a"]["reason"]
    assert verdicts["b"]["status"] == verdicts["c"]["status"] == "ok"
    lone = judge({("h", "z", "write"): [(10, 5)]}, {}, settings)
    assert lone[0]["status"] == "ok" and lone[0]["reason"] == "no baseline and no peers yet"


def test_peers_are_drives_of_the_same_kind_and_source():
    """A slow virtual disk is not judged against NVMe drives, nor a real drive against mock ones."""
    settings = load_settings(environ={})
    fast, slow = [(100, 99), (101, 1)], [(300, 99), (301, 1)]
    recent = {("h1", "nvme0n1", "read"): fast, ("h2", "nvme0n1", "read"): fast, ("h3", "vda", "read"): slow,
              ("h4", "nvme1n1", "read"): slow}
    sources = {("h1", "nvme0n1"): "mock", ("h2", "nvme0n1"): "mock", ("h3", "vda"): "mock", ("h4", "nvme1n1"): "libbpf"}
    verdicts = {v["host"]: v for v in judge(recent, {}, settings, sources)}
    assert verdicts["h3"]["fleet_p99_us"] is None and verdicts["h3"]["status"] == "ok"  # no vd peer
    assert verdicts["h4"]["fleet_p99_us"] is None and verdicts["h4"]["status"] == "ok"  # no libbpf peer
    assert verdicts["h1"]["fleet_p99_us"] == verdicts["h2"]["recent_p99_us"]
    mixed = {v["host"]: v for v in judge(recent, {}, settings)}  # without sources the NVMe drives are peers
    assert mixed["h4"]["status"] == "degraded" and "over 2 peers" in mixed["h4"]["reason"]


@pytest.mark.slow
@pytest.mark.spark
def test_end_to_end_the_degrading_mock_drive_is_flagged_and_the_others_are_ok(tmp_path, free_udp_port, free_tcp_port):
    """Two hours of mock drive history over real UDP, through the collector and the Spark speed job, judged by the API."""
    now = time.time()
    messages = fleet_history(now)
    env = {"HEALTHMON_DATA_DIR": str(tmp_path / "var"), "HEALTHMON_UDP_PORT": str(free_udp_port),
           "HEALTHMON_API_PORT": str(free_tcp_port), "HEALTHMON_SEGMENT_MAX_SECONDS": "0.2"}
    api = f"http://127.0.0.1:{free_tcp_port}"
    procs = [start_healthmon([part], env) for part in ("collect", "speed", "serve")]
    try:
        wait_until(lambda: requests.get(f"{api}/healthz", timeout=1).ok, 30, "API up")
        wait_until(lambda: (read_state(tmp_path / "var" / "state", "speed") or {}).get("state") == "streaming", 120, "speed job")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for i, message in enumerate(messages):
                sock.sendto(encode(message), ("127.0.0.1", free_udp_port))
                if i % 100 == 0:
                    time.sleep(0.01)
        io_count = sum(m["count"] for m in messages)
        wait_until(lambda: sum(d["count"] for d in requests.get(f"{api}/api/v1/disks", timeout=5).json()["disks"]) == io_count,
                   120, "every interval in the merged view")
        devices = requests.get(f"{api}/api/v1/disks/health", timeout=10).json()["devices"]
        # Percentiles of the whole recent period equal those of the merged sketches that were sent.
        recent_from = int((now - 900) // 60 * 60)
        host, device = "host-00", "nvme0n1"
        answer = requests.get(f"{api}/api/v1/disks/{host}/{device}/latency",
                              params={"from": recent_from, "to": now, "step": "1h", "op": "read"}, timeout=10).json()
    finally:
        for proc in procs:
            assert stop_process(proc) == 0
    status = {(d["host"], d["device"], d["op"]): d["status"] for d in devices}
    assert len(status) == 12
    degrading = ("host-02", "nvme1n1")
    for (host_, device_, op), verdict in status.items():
        expected = "degraded" if (host_, device_) == degrading else "ok"
        assert verdict == expected, (host_, device_, op, [d["reason"] for d in devices if (d["host"], d["device"]) == (host_, device_)])
    hi = math.ceil(now)
    for point in answer["points"]:
        merged = LatencySketch()
        for m in messages:
            window = m["ts"] // 60 * 60
            if (m["host"], m["device"], m["op"]) == (host, device, "read") and recent_from <= window < hi and \
                    point["ts"] <= window < point["ts"] + 3600:
                merged.merge(LatencySketch.from_pairs(m["buckets"], m["sum_us"], m["max_us"]))
        assert point["count"] == merged.count
        assert point["p50_us"] == merged.quantile(0.5) and point["p99_us"] == merged.quantile(0.99)
    assert sum(p["count"] for p in answer["points"]) > 0
