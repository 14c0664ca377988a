"""Liveness: up / stale / missing from each source's own message interval, over real view files.

The views are built from known messages (``tests.test_merge_rule``), part in
the batch view and part in the real-time view, and the clock is injected, so
every status and interval below is computed independently from the messages.
"""

from __future__ import annotations

import pytest

from healthmon.config import load_settings
from healthmon.views import DISK_LATENCY, REALTIME_VIEW, ViewReader, update_view
from serving.app import create_app
from serving.liveness import classify, host_statuses, service_statuses
from serving.params import iso
from tests.test_merge_rule import message, publish_batch, publish_realtime

S0 = 1704067200  # 2024-01-01T00:00:00Z
HORIZON = S0 + 3600
NOW = S0 + 2 * 3600 + 0.5


def _every(service: str, first: float, last: float, gap: float, cpu: float = 20.0) -> list[dict]:
    out, ts = [], first
    while ts <= last:
        out.append(message(service, ts, cpu + (ts - first) / 1000, ram=40.0, disk=60.0))
        ts += gap
    return out


# Each service with (messages, its expected status at NOW).  Settings: factor 3, floor 15 s, missing 300 s.
SOURCES = {
    "steady-2s": (_every("steady-2s", S0 + 600, NOW - 1, 2.0), "up"),  # spans the horizon: batch and real-time rows
    "slow-30s": (_every("slow-30s", NOW - 1800, NOW - 100, 30.0), "stale"),  # silent 100 s > 3 * 30 s
    "gone": (_every("gone", NOW - 1500, NOW - 400, 10.0), "missing"),  # silent 400 s > 300 s
    "once": ([message("once", NOW - 40, 10.0)], "up"),  # one message: no interval learnt, never stale
    "ancient": ([message("ancient", S0 + 5, 10.0), message("ancient", S0 + 65, 10.0)], "missing"),  # before the history
}
MESSAGES = [m for msgs, _ in SOURCES.values() for m in msgs]


def disk_row(host: str, device: str, op: str, window_start: int, messages: int, last_ts: float) -> dict:
    return {
        "host": host, "device": device, "op": op, "window_start": window_start, "messages": messages, "count": 100 * messages,
        "sum_us": 1000.0 * messages, "max_us": 90.0, "sketched_count": 100 * messages, "source": "mock", "last_ts": last_ts,
    }


def _disk_rows() -> list[dict]:
    """host-a: nvme0n1 read every 10 s until NOW-5 (up); host-b: every 10 s until NOW-60 (stale: > 3 * 10 s)."""
    rows = []
    for host, last in (("host-a", NOW - 5), ("host-b", NOW - 60)):
        for device in ("nvme0n1", "nvme1n1"):
            ts = NOW - 1200
            by_window: dict[int, list[float]] = {}
            while ts <= last:
                by_window.setdefault(int(ts // 60 * 60), []).append(ts)
                ts += 10
            rows += [disk_row(host, device, "read", ws, len(t), max(t)) for ws, t in by_window.items()]
    return rows


DISK_ROWS = _disk_rows()


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    settings = load_settings({"data_dir": str(tmp_path_factory.mktemp("liveness"))}, environ={})
    publish_batch(settings.views_dir, MESSAGES, HORIZON)
    columns = DISK_LATENCY.columns

    def add_disks(con):
        for row in DISK_ROWS:
            con.execute(f"INSERT INTO disk_latency_window ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                        [row[c] for c in columns])

    publish_realtime(settings.views_dir, MESSAGES, HORIZON)
    update_view(settings.views_dir / REALTIME_VIEW, add_disks)
    return settings


@pytest.fixture(scope="module")
def connection(settings):
    reader = ViewReader(settings.views_dir)
    yield reader.connection()
    reader.close_all()


def expected_interval(msgs: list[dict], now: float, history_s: float = 3600, window_s: int = 60) -> float | None:
    """Independent: span from the first window (in the history period) to the newest message, over n - 1."""
    lo = (now - history_s) // window_s * window_s
    recent = [m["ts"] for m in msgs if m["ts"] // window_s * window_s >= lo]
    if len(recent) < 2:
        return None
    return (max(recent) - min(recent) // window_s * window_s) / (len(recent) - 1)


def test_classify_thresholds():
    s = load_settings({}, environ={})
    assert classify(10, 1.0, s) == ("up", 15.0, 300.0)  # the floor: never stale before 15 s
    assert classify(16, 1.0, s)[0] == "stale"
    assert classify(91, 30.0, s) == ("stale", 90.0, 300.0)
    assert classify(89, 30.0, s)[0] == "up"
    assert classify(301, 30.0, s)[0] == "missing"
    assert classify(301, 600.0, s) == ("up", 1800.0, 3600.0)  # a slow sender: stale after 3 intervals, missing after 2 * that
    assert classify(1801, 600.0, s)[0] == "stale" and classify(3601, 600.0, s)[0] == "missing"
    assert classify(10_000, None, s)[0] == "missing" and classify(299, None, s) == ("up", None, 300.0)


def test_service_statuses(settings, connection):
    rows = {r["service"]: r for r in service_statuses(connection, NOW, settings)}
    assert sorted(rows) == sorted(SOURCES)
    for name, (msgs, status) in SOURCES.items():
        row = rows[name]
        assert row["status"] == status, (name, row)
        assert row["count"] == len(msgs)
        assert row["last_ts"] == max(m["ts"] for m in msgs)
        assert row["silent_s"] == pytest.approx(NOW - row["last_ts"])
        interval = expected_interval(msgs, NOW)
        assert row["expected_interval_s"] == (None if interval is None else pytest.approx(interval)), name
    newest = max(SOURCES["steady-2s"][0], key=lambda m: m["ts"])
    assert rows["steady-2s"]["current"] == {"cpu_pct": newest["cpu_pct"], "ram_used_pct": 40.0, "disk_used_pct": 60.0}
    assert rows["ancient"]["current"] == {"cpu_pct": None, "ram_used_pct": None, "disk_used_pct": None}


def test_statuses_move_with_the_clock(settings, connection):
    """The same views judged later: the 2 s sender is stale after its 15 s floor, missing after 300 s."""
    last = max(m["ts"] for m in SOURCES["steady-2s"][0])
    status = {t: {r["service"]: r["status"] for r in service_statuses(connection, last + t, settings)}["steady-2s"]
              for t in (14, 16, 299, 301)}
    assert status == {14: "up", 16: "stale", 299: "stale", 301: "missing"}


def test_host_statuses(settings, connection):
    hosts = {h["host"]: h for h in host_statuses(connection, NOW, settings)}
    assert sorted(hosts) == ["host-a", "host-b"]
    assert hosts["host-a"]["status"] == "up" and hosts["host-b"]["status"] == "stale"
    assert hosts["host-a"]["devices"] == ["nvme0n1", "nvme1n1"]
    assert hosts["host-b"]["last_ts"] == max(r["last_ts"] for r in DISK_ROWS if r["host"] == "host-b")
    for host in hosts.values():
        assert host["expected_interval_s"] == pytest.approx(10.0, rel=0.1)


def test_services_and_hosts_endpoints(settings):
    client = create_app(settings, clock=lambda: NOW).test_client()
    answer = client.get("/api/v1/services").get_json()
    assert answer["now"] == iso(NOW) and answer["now_ts"] == NOW
    by_name = {s["service"]: s for s in answer["services"]}
    assert {name: s["status"] for name, s in by_name.items()} == {name: status for name, (_, status) in SOURCES.items()}
    slow = by_name["slow-30s"]
    assert slow["last_seen_ts"] == max(m["ts"] for m in SOURCES["slow-30s"][0]) and slow["last_seen"] == iso(slow["last_seen_ts"])
    assert "last_ts" not in slow and slow["stale_after_s"] == pytest.approx(3 * slow["expected_interval_s"])
    hosts = client.get("/api/v1/hosts").get_json()["hosts"]
    assert [(h["host"], h["status"]) for h in hosts] == [("host-a", "up"), ("host-b", "stale")]
    assert client.get("/api/v1/hosts?x=1").status_code == 400
