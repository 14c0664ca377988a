"""``healthmon mock``: real datagrams over UDP, valid, deterministic for a seed."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from healthmon.schema import encode, parse_message
from healthmon.sketch import LatencySketch, quantile
from mock_services import drives
from mock_services.drives import drive_messages
from tests.procs import healthmon_env


def receive_mock(args: list[str], expected: int) -> list[dict]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(10)
        port = sock.getsockname()[1]
        proc = subprocess.Popen(
            [sys.executable, "-m", "healthmon.cli", "mock", "--target", f"127.0.0.1:{port}", *args], env=healthmon_env({})
        )
        messages = [parse_message(sock.recv(65535), time.time()) for _ in range(expected)]
        assert proc.wait(30) == 0
    return messages


@pytest.mark.parametrize("wire_format", ["canonical", "seed003"])
def test_mock_sends_valid_deterministic_messages(wire_format):
    args = ["--services", "3", "--rate", "20", "--duration", "0.5", "--seed", "11", "--format", wire_format]
    first = receive_mock(args, 30)
    second = receive_mock(args, 30)
    assert {m["service"] for m in first} == {"api-gateway", "auth", "billing"}
    values = [{k: v for k, v in m.items() if k != "ts"} for m in first]
    assert values == [{k: v for k, v in m.items() if k != "ts"} for m in second]
    assert all(abs(m["ts"] - time.time()) < 30 for m in first)
    other_seed = receive_mock([*args[:-3], "13", "--format", wire_format], 30)
    assert [m["cpu_pct"] for m in other_seed] != [m["cpu_pct"] for m in first]


# ---------------------------------------------------------------- mock drives (disk_latency)

DRIVE_ARGS = ["--services", "0", "--drives", "3", "--drive-interval", "0.2", "--duration", "0.45", "--seed", "5"]


def _without_ts(messages: list[dict]) -> list[dict]:
    return [{k: v for k, v in m.items() if k != "ts"} for m in messages]


def test_mock_drives_send_valid_deterministic_disk_latency():
    # 3 drives x 2 ops at the end of each of the 2 intervals that fit in 0.45 s.
    first = receive_mock(DRIVE_ARGS, 12)
    assert all(m["type"] == "disk_latency" and m["source"] == "mock" and m["interval_s"] == 0.2 for m in first)
    assert [(m["host"], m["device"], m["op"]) for m in first[:6]] == [
        ("host-00", "nvme0n1", "read"), ("host-00", "nvme0n1", "write"),
        ("host-00", "nvme1n1", "read"), ("host-00", "nvme1n1", "write"),
        ("host-01", "nvme0n1", "read"), ("host-01", "nvme0n1", "write"),
    ]
    assert [(m["host"], m["device"], m["op"]) for m in first[6:]] == [(m["host"], m["device"], m["op"]) for m in first[:6]]
    assert all(100 <= m["count"] <= 1000 and abs(m["ts"] - time.time()) < 30 for m in first)
    assert first[:6] != first[6:] and _without_ts(first[:6]) != _without_ts(first[6:])  # a new interval, new values
    second = receive_mock(DRIVE_ARGS, 12)
    assert _without_ts(second) == _without_ts(first)
    other_seed = receive_mock([*DRIVE_ARGS[:-1], "6"], 12)
    assert [m["buckets"] for m in other_seed] != [m["buckets"] for m in first]


def test_mock_services_and_drives_together():
    args = ["--services", "2", "--rate", "10", "--drives", "1", "--drive-interval", "0.25", "--duration", "0.5", "--seed", "5",
            "--scenario", "degrading_drive", "--format", "seed003"]
    received = receive_mock(args, 10 + 2 * 2)  # health at 0, 0.1, ..., 0.4; drives at 0.25 and 0.5
    by_type = {t: [m for m in received if m["type"] == t] for t in ("health", "disk_latency")}
    assert len(by_type["health"]) == 10 and len(by_type["disk_latency"]) == 4
    assert {m["service"] for m in by_type["health"]} == {"api-gateway", "auth"}
    assert {(m["host"], m["device"]) for m in by_type["disk_latency"]} == {("host-00", "nvme0n1")}


def test_mock_default_sends_no_drives():
    received = receive_mock(["--services", "1", "--rate", "20", "--duration", "0.3", "--drive-interval", "0.05"], 6)
    assert {m["type"] for m in received} == {"health"}


@pytest.mark.parametrize("bad", [["--services", "0"], ["--drives", "-1"], ["--drives", "1", "--drive-interval", "0"]])
def test_mock_rejects_bad_arguments(bad):
    proc = subprocess.run([sys.executable, "-m", "healthmon.cli", "mock", "--target", "127.0.0.1:9", "--duration", "0.1", *bad],
                          env=healthmon_env({}), capture_output=True, timeout=30)
    assert proc.returncode == 2


def _p99s(drive, seed: int, elapsed: list[float], op: str = "read") -> list[float]:
    return [drives.simulate(drive, op, seed, t).quantile(0.99) for t in elapsed]


def test_drive_names_and_profiles():
    fleet = drives.make_drives(5, 7, "steady")
    assert [(d.host, d.device) for d in fleet] == [
        ("host-00", "nvme0n1"), ("host-00", "nvme1n1"), ("host-01", "nvme0n1"), ("host-01", "nvme1n1"), ("host-02", "nvme0n1")]
    assert not any(d.degrading for d in fleet)
    assert fleet == drives.make_drives(5, 7, "steady")
    degrading = drives.make_drives(5, 7, "degrading_drive")
    assert [d.degrading for d in degrading] == [False, False, False, False, True]
    assert drives.make_drives(0, 7, "degrading_drive") == []


def test_drive_values_are_a_pure_function_of_seed_and_elapsed_time():
    drive = drives.make_drives(2, 3, "degrading_drive")[1]
    a = drives.drive_messages([drive], 3, 600.0, ts=1.0, interval_s=5.0)
    drives.simulate(drive, "read", 3, 5.0)  # other calls in between change nothing
    b = drives.drive_messages([drive], 3, 600.0, ts=2.0, interval_s=5.0)
    assert _without_ts(a) == _without_ts(b)
    assert drives.simulate(drive, "read", 3, 605.0).to_pairs() != drives.simulate(drive, "read", 3, 600.0).to_pairs()
    assert drives.simulate(drive, "read", 4, 600.0).to_pairs() != drives.simulate(drive, "read", 3, 600.0).to_pairs()


def test_drive_messages_are_valid_disk_latency():
    fleet = drives.make_drives(4, 1, "degrading_drive")
    now = time.time()
    for elapsed in (5.0, 3600.0):
        for message in drive_messages(fleet, 1, elapsed, now, 5.0):
            parsed = parse_message(encode(message), now)
            assert parsed == message
            assert sum(c for _, c in parsed["buckets"]) == parsed["count"] >= 200
            assert parsed["max_us"] <= parsed["sum_us"]


def test_healthy_drives_stay_within_nvme_bounds():
    fleet = drives.make_drives(4, 11, "degrading_drive")
    elapsed = [5.0 * k for k in range(1, 2000, 37)]  # up to ~2.8 hours
    for drive in fleet[:-1]:
        for op, (p50_low, p50_high, p99_low, p99_high) in {"read": (50, 130, 200, 1000), "write": (60, 160, 250, 1200)}.items():
            sketches = [drives.simulate(drive, op, 11, t) for t in elapsed]
            assert all(p50_low <= s.quantile(0.5) <= p50_high for s in sketches), op
            assert all(p99_low <= s.quantile(0.99) <= p99_high for s in sketches), op
    # and the typical healthy NVMe read: p50 ~80 us, p99 ~400 us; writes a bit slower
    reads = LatencySketch()
    writes = LatencySketch()
    for drive in fleet[:-1]:
        for t in elapsed:
            reads.merge(drives.simulate(drive, "read", 11, t))
            writes.merge(drives.simulate(drive, "write", 11, t))
    assert 65 <= quantile(reads.to_pairs(), 0.5) <= 95 and 320 <= quantile(reads.to_pairs(), 0.99) <= 500
    assert quantile(writes.to_pairs(), 0.5) > quantile(reads.to_pairs(), 0.5)
    assert quantile(writes.to_pairs(), 0.99) > quantile(reads.to_pairs(), 0.99)


def test_degrading_drive_tail_grows_with_elapsed_time():
    fleet = drives.make_drives(3, 11, "degrading_drive")
    sick, healthy = fleet[-1], fleet[0]
    # Merged over a minute of 5 s intervals, so noise of single intervals does not decide.
    def p99_over_minute(drive, start: float, op: str = "read") -> float:
        window = LatencySketch()
        for k in range(12):
            window.merge(drives.simulate(drive, op, 11, start + 5.0 * k))
        return quantile(window.to_pairs(), 0.99)

    starts = [0.0, 360.0, 720.0, 1080.0]  # 0, 6, 12 and 18 minutes: two doublings apart
    for op in ("read", "write"):
        sick_p99 = [p99_over_minute(sick, t, op) for t in starts]
        assert all(b > 2.5 * a for a, b in zip(sick_p99, sick_p99[1:], strict=False)), (op, sick_p99)  # ~4x each step
        assert sick_p99[-1] > 20 * sick_p99[0]
        healthy_p99 = [p99_over_minute(healthy, t, op) for t in starts]
        assert max(healthy_p99) < 1.5 * min(healthy_p99), (op, healthy_p99)
        assert sick_p99[0] < 2 * healthy_p99[0]  # at the start the degrading drive looks healthy
    # the median stays put: it is the tail that grows
    early, late = drives.simulate(sick, "read", 11, 5.0), drives.simulate(sick, "read", 11, 3600.0)
    assert late.quantile(0.5) < 2 * early.quantile(0.5)
    # capped: after the cap, the tail stops growing
    assert drives.tail_growth(10 * 3600.0) == drives.tail_growth(2 * 3600.0) == drives.MAX_GROWTH
    assert drives.tail_growth(drives.DOUBLING_S) == pytest.approx(2.0)
    capped = [p99_over_minute(sick, t) for t in (3 * 3600.0, 9 * 3600.0)]
    assert max(capped) < 1.5 * min(capped)


def test_steady_scenario_has_no_degrading_drive():
    fleet = drives.make_drives(2, 11, "steady")
    assert all(p < 1000 for drive in fleet for p in _p99s(drive, 11, [3600.0, 7200.0]))
