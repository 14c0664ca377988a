"""``healthmon mock``: real datagrams over UDP, valid, deterministic for a seed; the scenarios' shapes.

Each scenario's test checks the values that make its alert or status: they
cross the bundled rules' thresholds (CPU > 90 %, RAM used > 90 %, disk free
< 10 %) exactly at the minutes of the scenario timeline (README, "Mock
scenarios").  ``tests/test_scenarios.py`` runs them all through the real
pipeline and checks the alerts and statuses themselves.
"""

from __future__ import annotations

import random
import socket
import subprocess
import sys
import time

import pytest

from healthmon.cli import build_parser
from healthmon.schema import NAME_RE, REASONS, Rejected, encode, parse_message
from healthmon.sketch import LatencySketch, quantile
from healthmon.supervisor import process_commands
from mock_services import drives, scenarios
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


@pytest.mark.parametrize("bad", [["--services", "0"], ["--drives", "-1"], ["--drives", "1", "--drive-interval", "0"],
                                 ["--scenario", "steady,cpu-spike"], ["--time-scale", "0"], ["--time-scale", "1e9"],
                                 ["--malformed-share", "1.5"]])
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


# ---------------------------------------------------------------- scenarios: pure functions of (profile, elapsed, rng)

MIN = 60.0
SEEDS = (1, 42, 2024)
GRID = [5.0 * k + 0.5 for k in range(2 * 480)]  # every 5 s over two 40-minute cycles, off the exact boundaries


def samples(scenario: str, times=GRID, share: float = scenarios.MALFORMED_SHARE):
    """(profile, t, sample) for 8 services of ``scenario`` under each seed, at each scenario time ``t``."""
    for seed in SEEDS:
        for profile in scenarios.make_profiles(8, seed, [scenario], share):
            rng = random.Random(seed)
            for t in times:
                yield profile, t, scenarios.SCENARIOS[scenario](profile, t, rng)


def one(scenario: str, t: float) -> dict:
    """What one service of ``scenario`` sends at scenario time ``t``."""
    return scenarios.SCENARIOS[scenario](scenarios.make_profiles(1, 3, [scenario])[0], t, random.Random(3))


def ram_used_pct(m: dict) -> float:
    return (m["ram_total_gb"] - m["ram_free_gb"]) / m["ram_total_gb"] * 100


def disk_free_pct(m: dict) -> float:
    return m["disk_free_gb"] / m["disk_total_gb"] * 100


def in_cycle_minutes(t: float) -> float:
    return t % (40 * MIN) / MIN


def test_every_sample_is_a_valid_message_but_the_broken_ones():
    now = time.time()
    for name, behaviour in scenarios.SCENARIOS.items():
        if behaviour is None:
            continue
        for _profile, _t, sample in samples(name, GRID[::7]):
            if sample is None or isinstance(sample, scenarios.Malformed):
                continue
            parsed = parse_message(scenarios.datagram(scenarios.stamped(sample, now)), now)
            assert parsed == {"type": "health", **sample, "ts": now}


def test_steady_stays_clear_of_every_alert_threshold():
    for _profile, _t, m in samples("steady", [30.0 * k for k in range(480)]):  # four hours
        assert m["cpu_pct"] < 90 and ram_used_pct(m) < 80 and disk_free_pct(m) > 19


def test_cpu_spike_is_above_95_from_minute_4_to_34_of_each_cycle():
    for _profile, t, m in samples("cpu_spike"):
        minute = in_cycle_minutes(t)
        assert (m["cpu_pct"] > 95) == (4 <= minute < 34), (t, m["cpu_pct"])
        assert m["cpu_pct"] > 95 or m["cpu_pct"] < 90


def test_memory_leak_crosses_90_at_minute_10_and_restarts_at_40():
    for _profile, t, m in samples("memory_leak"):
        minute = in_cycle_minutes(t)
        assert (ram_used_pct(m) > 90) == (minute > 10), (t, ram_used_pct(m))
    ram = [ram_used_pct(one("memory_leak", minute * MIN)) for minute in (0, 2, 20, 39.99, 40, 42)]
    assert ram == pytest.approx([50, 88, 92.5, 97.5, 50, 88], abs=0.01)
    leak = [ram_used_pct(one("memory_leak", t)) for t in GRID[:480]]
    assert leak == sorted(leak)  # within a cycle it only climbs


def test_disk_fill_leaves_less_than_10_percent_free_from_minute_8_until_the_clean_up_at_40():
    for _profile, t, m in samples("disk_fill"):
        minute = in_cycle_minutes(t)
        assert (disk_free_pct(m) < 10) == (minute > 8), (t, disk_free_pct(m))
        assert disk_free_pct(m) > 1.99
    free = [disk_free_pct(one("disk_fill", minute * MIN)) for minute in (0, 20, 39.99, 40)]
    assert free == pytest.approx([12, 7, 2, 12], abs=0.01)


def test_silent_sends_nothing_from_minute_4_to_34():
    for _profile, t, sample in samples("silent"):
        assert (sample is None) == (4 <= in_cycle_minutes(t) < 34), t


def test_flapping_cpu_is_above_90_for_five_minutes_then_below_for_five():
    for _profile, t, m in samples("flapping"):
        high = in_cycle_minutes(t) % 10 < 5
        assert (m["cpu_pct"] > 90) == high, (t, m["cpu_pct"])
        assert 93 <= m["cpu_pct"] <= 100 if high else 80 <= m["cpu_pct"] <= 88


def test_malformed_breaks_the_given_share_each_way_with_its_own_collector_reason():
    now = time.time()
    assert set(scenarios.MALFORMATIONS) <= set(REASONS)
    for share in (0.2, 0.5):
        seen: dict[str, int] = {}
        total = 0
        for profile, _t, sample in samples("malformed", GRID, share):
            assert profile.name.endswith("-malformed") and profile.malformed_share == share
            total += 1
            data = scenarios.datagram(scenarios.stamped(sample, now))
            if not isinstance(sample, scenarios.Malformed):
                parse_message(data, now)  # the rest is valid
                continue
            with pytest.raises(Rejected) as rejected:
                parse_message(data, now)
            assert rejected.value.reason == sample.reason, (sample.reason, data)
            seen[sample.reason] = seen.get(sample.reason, 0) + 1
        assert set(seen) == set(scenarios.MALFORMATIONS)
        assert sum(seen.values()) == pytest.approx(share * total, rel=0.1)
    assert not [s for _p, _t, s in samples("malformed", GRID[:100], 0.0) if isinstance(s, scenarios.Malformed)]


def test_scenarios_repeat_every_cycle():
    for name, behaviour in scenarios.SCENARIOS.items():
        if behaviour is None or name == "steady":
            continue
        profile = scenarios.make_profiles(1, 5, [name], 0.0)[0]
        for t in GRID[:480:11]:
            first, later = behaviour(profile, t, random.Random(1)), behaviour(profile, t + 80 * MIN, random.Random(1))
            if first is None or later is None:
                assert first is later is None
                continue
            # the slow hourly wave of the steady part moves; the scenario's own shape does not
            assert (first["cpu_pct"] > 90) == (later["cpu_pct"] > 90), (name, t)
            assert (ram_used_pct(first) > 90) == (ram_used_pct(later) > 90) and (disk_free_pct(first) < 10) == (disk_free_pct(later) < 10)


def test_services_take_the_listed_scenarios_round_robin_and_show_them_in_their_names():
    everything = scenarios.parse_scenarios("all")
    assert everything == ["steady", "cpu_spike", "memory_leak", "disk_fill", "silent", "flapping", "malformed", "degrading_drive"]
    fleet = scenarios.make_profiles(9, 42, everything)
    assert [(p.name, p.scenario) for p in fleet] == [
        ("api-gateway", "steady"), ("auth-cpu-spike", "cpu_spike"), ("billing-memory-leak", "memory_leak"),
        ("catalog-disk-fill", "disk_fill"), ("checkout-silent", "silent"), ("search-flapping", "flapping"),
        ("inventory-malformed", "malformed"), ("notifications", "steady"), ("payments-cpu-spike", "cpu_spike"),
    ]
    assert all(NAME_RE.match(p.name) for p in fleet)
    assert [p.scenario for p in scenarios.make_profiles(4, 1, scenarios.parse_scenarios("steady, steady,silent"))] == [
        "steady", "steady", "silent", "steady"]
    assert [p.name for p in scenarios.make_profiles(2, 1, ["degrading_drive"])] == ["api-gateway", "auth"]  # drives only: steady
    # the same traits whatever the scenario: only the name and the behaviour change
    plain, spiking = scenarios.make_profiles(2, 7)[1], scenarios.make_profiles(2, 7, ["steady", "cpu_spike"])[1]
    assert (plain.cpu_base, plain.ram_total_gb) == (spiking.cpu_base, spiking.ram_total_gb)
    with pytest.raises(ValueError, match="'cpu-spike'"):
        scenarios.parse_scenarios("steady,cpu-spike")


# ---------------------------------------------------------------- scenarios over the wire, on a faster clock


def receive_until_exit(args: list[str]) -> list[bytes]:
    """Every datagram ``healthmon mock <args>`` sends, until it exits."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        proc = subprocess.Popen([sys.executable, "-m", "healthmon.cli", "mock", "--target", f"127.0.0.1:{sock.getsockname()[1]}",
                                 *args], env=healthmon_env({}))
        assert proc.wait(30) == 0
        sock.setblocking(False)
        received = []
        while True:  # the sender has exited: everything it sent over loopback is queued here already
            try:
                received.append(sock.recv(65535))
            except BlockingIOError:
                return received


def test_time_scale_runs_the_scenario_clock_faster():
    # x600: minute 4 of the scenario clock is 0.4 s after the start; ticks every 0.05 s up to 0.7 s (15 ticks)
    args = ["--services", "2", "--scenario", "cpu_spike,silent", "--time-scale", "600", "--rate", "20", "--duration", "0.72"]
    received = [parse_message(data, time.time()) for data in receive_until_exit(args)]
    spiking = [m for m in received if m["service"] == "api-gateway-cpu-spike"]
    assert [m["cpu_pct"] > 95 for m in spiking] == [False] * 8 + [True] * 7
    assert len([m for m in received if m["service"] == "auth-silent"]) == 8  # silent from 0.4 s on
    assert len(received) == 15 + 8


def test_time_scale_drives_the_drive_clock_too():
    seed, interval, scale = 5, 0.2, 900.0
    received = [parse_message(data, time.time()) for data in receive_until_exit(
        ["--services", "0", "--drives", "1", "--drive-interval", str(interval), "--duration", "0.45", "--seed", str(seed),
         "--scenario", "degrading_drive", "--time-scale", str(scale)])]
    fleet = drives.make_drives(1, seed, "degrading_drive")
    expected = [m for k in (1, 2) for m in drive_messages(fleet, seed, k * interval * scale, 0.0, interval)]
    assert _without_ts(received) == _without_ts(expected)  # the tail at 3 and 6 minutes of the drive clock: 2x and 4x


def test_malformed_datagrams_over_the_wire_whatever_the_format():
    args = ["--services", "1", "--scenario", "malformed", "--malformed-share", "0.5", "--rate", "200", "--duration", "1",
            "--format", "seed003"]
    reasons = []
    for data in receive_until_exit(args):
        try:
            assert parse_message(data, time.time())["service"] == "api-gateway-malformed"
        except Rejected as exc:
            reasons.append(exc.reason)
    assert 60 <= len(reasons) <= 140 and set(reasons) <= set(scenarios.MALFORMATIONS) and len(set(reasons)) >= 8


def test_up_mock_runs_every_scenario_beside_the_steady_services():
    argv = process_commands(mock=True, mock_services=3)["mock"]
    args = build_parser().parse_args(argv[3:])
    fleet = scenarios.make_profiles(args.services, args.seed, args.scenario, args.malformed_share)
    assert [p.name for p in fleet[:3]] == ["api-gateway", "auth", "billing"]
    assert {p.scenario for p in fleet} | {"degrading_drive"} == set(scenarios.SCENARIOS) == set(args.scenario)
    assert len(fleet) == 3 + len(scenarios.SCENARIOS) - 2  # one service per scenario but steady and degrading_drive
    assert args.time_scale == 3 and args.drives == 6
