"""Drive health: a degrading mock drive is flagged, healthy ones are not (real DuckDB views, real API server)."""

from __future__ import annotations

import time

import pyarrow as pa
import requests

from healthmon.config import load_settings
from healthmon.views import DISK_LATENCY, DISK_LATENCY_BUCKET, REALTIME_VIEW, update_view
from mock_services.drives import drive_messages, make_drives
from serving.disk_health import judge
from tests.procs import start_healthmon, stop_process, wait_until

SEED = 3


def view_rows(messages: list[dict]) -> tuple[pa.Table, pa.Table]:
    """The real-time view rows of disk_latency messages, one message per window (as the speed layer would write them)."""
    windows, buckets = [], []
    for m in messages:
        key = {"host": m["host"], "device": m["device"], "op": m["op"], "window_start": int(m["ts"] // 60 * 60)}
        windows.append({**key, "messages": 1, "count": m["count"], "sum_us": m["sum_us"], "max_us": m["max_us"],
                        "sketched_count": m["count"], "source": m["source"], "last_ts": m["ts"]})
        buckets += [{**key, "bucket": b, "count": c} for b, c in m["buckets"]]
    return (pa.Table.from_pylist(windows).select(list(DISK_LATENCY.columns)),
            pa.Table.from_pylist(buckets).select(list(DISK_LATENCY_BUCKET.columns)))


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


def test_api_flags_the_degrading_drive_only(tmp_path, free_tcp_port):
    now = time.time()
    windows, buckets = view_rows(fleet_history(now))

    def fill(con):
        for spec, table in ((DISK_LATENCY, windows), (DISK_LATENCY_BUCKET, buckets)):
            con.register("rows", table)
            con.execute(f"INSERT INTO {spec.table()} SELECT * FROM rows")
            con.unregister("rows")

    settings = load_settings({"data_dir": str(tmp_path)}, environ={})
    update_view(settings.views_dir / REALTIME_VIEW, fill)
    proc = start_healthmon(["serve"], {"HEALTHMON_DATA_DIR": str(tmp_path), "HEALTHMON_API_PORT": str(free_tcp_port)})
    api = f"http://127.0.0.1:{free_tcp_port}"
    try:
        wait_until(lambda: requests.get(f"{api}/healthz", timeout=1).ok, 30, "API up")
        devices = requests.get(f"{api}/api/v1/disks/health", timeout=10).json()["devices"]
        listed = requests.get(f"{api}/api/v1/disks", timeout=10).json()["disks"]
    finally:
        assert stop_process(proc) == 0
    assert len(listed) == 6 and {d["source"] for d in listed} == {"mock"}
    status = {(d["host"], d["device"], d["op"]): d["status"] for d in devices}
    assert len(status) == 12
    degrading = ("host-02", "nvme1n1")
    for (host, device, op), verdict in status.items():
        expected = "degraded" if (host, device) == degrading else "ok"
        assert verdict == expected, (host, device, op, [d["reason"] for d in devices if d["device"] == device and d["host"] == host])
