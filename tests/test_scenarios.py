"""Each mock scenario causes the alert or status it is for.

Two tests:

- ``test_make_run_timeline``: what ``make run`` shows.  The mock of
  ``healthmon up --mock`` (its exact command line, time scale 3) is replayed
  over 16 minutes of an injected clock: its datagrams go through the
  collector's parser, the accepted ones into a real DuckDB view file (window
  aggregates as the speed job makes them, 2 s after they were sent), and the real alert engine
  evaluates the bundled rules on them every ``alert_eval_interval_s``.  Every
  alert of the documented timeline (README, "Mock scenarios") must go pending,
  fire and resolve at the documented minutes, flapping must never fire, and
  the steady and malformed services must raise nothing.
- ``test_every_scenario_through_the_real_pipeline``: ``healthmon collect``,
  ``speed``, ``serve``, ``schedule --jobs alerts`` and ``mock --scenario all``
  as real processes, on a faster clock (x60, 2 s windows, the bundled rules
  with short ``over`` and ``for``): the alerts, statuses, rejection counters
  and dead letters that the API and the landing store show.
"""

from __future__ import annotations

import base64
import socket
from collections import defaultdict

import duckdb
import orjson
import pyarrow as pa
import pytest
import requests
import yaml

from alerting.engine import evaluate
from alerting.rules import load_rules
from alerting.store import AlertStore
from healthmon.cli import build_parser
from healthmon.config import load_settings
from healthmon.landing import landing_for
from healthmon.schema import HEALTH_METRICS, Rejected, parse_message
from healthmon.state import read_state
from healthmon.supervisor import process_commands
from healthmon.views import REALTIME_VIEW, create_schema
from mock_services import drives, scenarios
from mock_services.sender import DRIVE_SCENARIO, health_batches
from tests.procs import free_port, start_healthmon, stop_process, wait_until

T0 = 1767225600  # 2026-01-01T00:00:00Z: the replay's clock starts here
PIPELINE_DELAY_S = 2.0  # replay: a message is in the real-time view this long after it was sent
MINUTE = 60.0


# ---------------------------------------------------------------- replay of `make run`

# What the speed job derives from the accepted messages: the windows from ``$lo`` on, of the messages sent up to ``$seen``.
HEALTH_WINDOWS_SQL = """
INSERT INTO rt.health_window (service, window_start, count, {metric_columns}, last_ts)
SELECT service, (floor(ts / $window) * $window)::BIGINT, count(*), {aggregates}, max(ts)
FROM sent_health WHERE ts >= $lo AND ts <= $seen GROUP BY ALL
"""
DISK_WINDOWS_SQL = """
INSERT INTO rt.disk_latency_window (host, device, op, window_start, messages, count, sum_us, max_us, sketched_count, source, last_ts)
SELECT host, device, op, (floor(ts / $window) * $window)::BIGINT, count(*), sum(count), sum(sum_us), max(max_us), sum(count),
       'mock', max(ts)
FROM sent_latency WHERE ts >= $lo AND ts <= $seen GROUP BY ALL
"""
BUCKET_WINDOWS_SQL = """
INSERT INTO rt.disk_latency_bucket_window (host, device, op, window_start, bucket, count)
SELECT host, device, op, (floor(ts / $window) * $window)::BIGINT, bucket, sum(count)
FROM sent_buckets WHERE ts >= $lo AND ts <= $seen GROUP BY ALL
"""


def measures(message: dict) -> dict:
    """The view's metrics of one accepted health message (what the speed job derives)."""
    def used(free: float, total: float) -> float:
        return (total - free) / total * 100 if total else 0.0

    return {"service": message["service"], "ts": message["ts"], "cpu_pct": message["cpu_pct"],
            "ram_used_pct": used(message["ram_free_gb"], message["ram_total_gb"]),
            "disk_used_pct": used(message["disk_free_gb"], message["disk_total_gb"])}


def make_run_mock_traffic(until_s: float) -> tuple[list[dict], list[dict], int, object]:
    """What the mock of ``healthmon up --mock`` sends in ``until_s`` seconds and the collector accepts; and the mock's args."""
    argv = process_commands(mock=True, mock_services=5)["mock"]
    args = build_parser().parse_args(argv[argv.index("mock"):])
    health = health_batches(args.services, args.seed, args.scenario, args.malformed_share)
    accepted, rejected = [], 0
    for n in range(int(until_s * args.rate)):
        t = n / args.rate
        for sample in health(t * args.time_scale, T0 + t):
            try:
                accepted.append(measures(parse_message(scenarios.datagram(sample), T0 + t)))
            except Rejected:
                rejected += 1
    fleet = drives.make_drives(args.drives, args.seed, DRIVE_SCENARIO)
    latency = [m for k in range(1, int(until_s / args.drive_interval) + 1)
               for m in drives.drive_messages(fleet, args.seed, k * args.drive_interval * args.time_scale,
                                              T0 + k * args.drive_interval, args.drive_interval)]
    return accepted, latency, rejected, args


def sent_tables(con: duckdb.DuckDBPyConnection, health: list[dict], latency: list[dict]) -> None:
    """The sent messages as tables ``sent_health``, ``sent_latency`` and ``sent_buckets``."""
    columns = {
        "sent_health": (health, ("service", "ts", *HEALTH_METRICS)),
        "sent_latency": (latency, ("host", "device", "op", "ts", "count", "sum_us", "max_us")),
        "sent_buckets": ([{**m, "bucket": b, "count": c} for m in latency for b, c in m["buckets"]],
                         ("host", "device", "op", "ts", "bucket", "count")),
    }
    for name, (rows, cols) in columns.items():
        con.register("_rows", pa.table({c: [row[c] for row in rows] for c in cols}))
        con.execute(f"CREATE TABLE {name} AS SELECT * FROM _rows")
        con.unregister("_rows")


@pytest.fixture(scope="module")
def make_run_transitions(tmp_path_factory) -> tuple[dict[tuple[str, str], list[tuple[str, float]]], object]:
    """{(rule, subject): [(state, minutes since the mock started), ...]} over 16 minutes of ``make run``, and the mock's args."""
    settings = load_settings({"data_dir": str(tmp_path_factory.mktemp("make-run"))}, environ={})
    until = 16 * MINUTE
    health, latency, rejected, args = make_run_mock_traffic(until)
    assert rejected > 0 and args.time_scale == 3
    ruleset = load_rules(settings.alert_rules_path, settings)
    store = AlertStore(settings.alerts_db)
    # The engine reads `rt` (here a view file this test rewrites in place) and `b` (no batch build yet).
    settings.views_dir.mkdir(parents=True)
    con = duckdb.connect()
    con.execute(f"ATTACH '{settings.views_dir / REALTIME_VIEW}' AS rt")
    con.execute("ATTACH ':memory:' AS b")
    create_schema(con, "rt")
    create_schema(con, "b")
    sent_tables(con, health, latency)
    metric_columns = ", ".join(f"{m}_{agg}" for m in HEALTH_METRICS for agg in ("sum", "min", "max", "last"))
    aggregates = ", ".join(f"sum({m}), min({m}), max({m}), arg_max({m}, ts)" for m in HEALTH_METRICS)
    statements = [
        ("health_window", HEALTH_WINDOWS_SQL.format(metric_columns=metric_columns, aggregates=aggregates)),
        ("disk_latency_window", DISK_WINDOWS_SQL),
        ("disk_latency_bucket_window", BUCKET_WINDOWS_SQL),
    ]
    transitions: dict[tuple[str, str], list[tuple[str, float]]] = defaultdict(list)
    try:
        t, changed_from = 0.0, 0  # windows from changed_from on got new messages since the previous evaluation
        while t <= until:
            now = T0 + t
            seen = now - PIPELINE_DELAY_S
            for table, sql in statements:
                con.execute(f"DELETE FROM rt.{table} WHERE window_start >= ?", [changed_from])
                con.execute(sql, {"window": settings.window_s, "lo": changed_from, "seen": seen})
            changed_from = int(seen // settings.window_s * settings.window_s)
            outcome = evaluate(store, ruleset, con, now, settings)
            assert not outcome.skipped_rules
            for _id, rule, subject, state in outcome.transitions:
                transitions[(rule, subject)].append((state, t / MINUTE))
            t += settings.alert_eval_interval_s
    finally:
        con.close()
        store.close()
    return dict(transitions), args


@pytest.mark.slow
def test_make_run_timeline(make_run_transitions):
    transitions, args = make_run_transitions
    fleet = {p.scenario: p.name for p in scenarios.make_profiles(args.services, args.seed, args.scenario)}
    sick = drives.make_drives(args.drives, args.seed, DRIVE_SCENARIO)[-1]
    for key, states in sorted(transitions.items()):
        print(key, [(state, round(minute, 2)) for state, minute in states])

    def timeline(rule: str, subject: str) -> list[tuple[str, float]]:
        return transitions.get((rule, subject), [])

    def at(rule: str, subject: str) -> dict[str, float]:
        """When the first alert of ``rule`` on ``subject`` went pending, fired and resolved (minutes)."""
        first: dict[str, float] = {}
        for state, minute in timeline(rule, subject):
            first.setdefault(state, minute)
        return first

    def assert_near(minute: float | None, documented: float, what: str) -> None:
        """Within two evaluations (30 s) of the documented minute."""
        assert minute is not None and abs(minute - documented) <= 0.5, (what, minute, documented)

    # cpu_spike: CPU ~97 % from 1:20 to 11:20; the 2-minute average passes 90 % about two minutes later
    spike = at("HighCpu", fleet["cpu_spike"])
    assert_near(spike.get("pending"), 3.25, "cpu_spike pending")
    assert_near(spike.get("firing"), 8.25, "cpu_spike firing")
    assert_near(spike.get("resolved"), 11.75, "cpu_spike resolved")
    # memory_leak: RAM used above 90 % from 3:20 to the restart at 13:20
    leak = at("HighMemory", fleet["memory_leak"])
    assert_near(leak.get("pending"), 4.25, "memory_leak pending")
    assert_near(leak.get("firing"), 9.25, "memory_leak firing")
    assert_near(leak.get("resolved"), 13.75, "memory_leak resolved")
    # disk_fill: free space below 10 % from 2:40 to the clean-up at 13:20
    fill = at("DiskAlmostFull", fleet["disk_fill"])
    assert_near(fill.get("pending"), 3.5, "disk_fill pending")
    assert_near(fill.get("firing"), 8.5, "disk_fill firing")
    assert_near(fill.get("resolved"), 15.25, "disk_fill resolved")
    # silent: nothing from 1:20 to 11:20 and from 14:40: stale 15 s later (liveness_stale_min_s), missing 5 minutes later
    stale, missing = timeline("ServiceStale", fleet["silent"]), at("ServiceMissing", fleet["silent"])
    assert [state for state, _ in stale] == ["pending", "firing", "resolved", "pending", "firing"]  # for: 0s
    for (state, minute), documented in zip(stale, (1.75, 1.75, 11.5, 15.0, 15.0), strict=True):
        assert_near(minute, documented, f"silent {state}")
    assert_near(missing.get("firing"), 6.5, "silent missing")
    assert_near(missing.get("resolved"), 11.5, "silent back")
    # flapping: CPU above 90 % for 100 s of every 200 s: HighCpu goes pending and resolves again and again, never firing
    flaps = timeline("HighCpu", fleet["flapping"])
    assert [state for state, _ in flaps] == ["pending", "resolved"] * 4 + ["pending"]
    # degrading_drive: the last drive's p99 passes 3x the fleet median (both ops) within 3 minutes, and stays there
    for op in ("read", "write"):
        drive = at("DriveLatencyDegraded", f"{sick.host}/{sick.device}/{op}")
        assert_near(drive.get("pending"), 2.75, f"degrading drive pending ({op})")
        assert_near(drive.get("firing"), 7.75, f"degrading drive firing ({op})")
        assert "resolved" not in drive
    # steady and malformed services, and the healthy drives, raise nothing
    steady = [p.name for p in scenarios.make_profiles(args.services, args.seed, args.scenario) if p.scenario == "steady"]
    assert len(steady) == 5
    expected = {fleet[s] for s in ("cpu_spike", "memory_leak", "disk_fill", "silent", "flapping")}
    expected |= {f"{sick.host}/{sick.device}/{op}" for op in ("read", "write")}
    assert {subject for _rule, subject in transitions} == expected  # nothing for steady, malformed or the healthy drives


# ---------------------------------------------------------------- every scenario through the real pipeline

TIME_SCALE = 60  # the 40-minute cycle takes 40 s: spike and silence from 4 to 34 s, flaps of 5 s, RAM > 90 % from 10 s
SHORT_DURATIONS = {  # the bundled rules with these `over` and `for`: the spike lasts 30 s, each flap 5 s
    "HighCpu": {"over": "6s", "for": "15s"},
    "HighMemory": {"over": "6s", "for": "5s"},
    "DiskAlmostFull": {"over": "6s", "for": "5s"},
    "DriveLatencyDegraded": {"for": "5s"},
    "ServiceStale": {"for": "4s"},  # a steady service would need a 16 s stall of the pipeline to raise it
}
PIPELINE_ENV = {
    "HEALTHMON_SEGMENT_MAX_SECONDS": "0.2",
    "HEALTHMON_WINDOW_S": "2",  # rules average over 2 s windows
    "HEALTHMON_ALERT_EVAL_INTERVAL_S": "1",
    # The silence lasts 30 s: stale after 12 s, missing after 24 s (2 x stale).  The floor is above the pipeline's
    # own delay on a loaded 2-core machine (up to ~10 s measured), so a steady service never looks stale.
    "HEALTHMON_LIVENESS_STALE_MIN_S": "12",
    "HEALTHMON_LIVENESS_MISSING_S": "20",
    "HEALTHMON_DISK_RECENT_S": "60",
    "HEALTHMON_DISK_BASELINE_S": "60",
}
MOCK_ARGS = ["--services", "7", "--scenario", "all", "--rate", "4", "--time-scale", str(TIME_SCALE), "--drives", "4",
             "--drive-interval", "1", "--malformed-share", "0.5", "--seed", "42"]


def short_rules() -> str:
    """The bundled rules file with the short durations of ``SHORT_DURATIONS``."""
    doc = yaml.safe_load(load_settings(environ={}).alert_rules_path.read_text())
    for rule in doc["rules"]:
        rule.update(SHORT_DURATIONS.get(rule["name"], {}))
    return yaml.safe_dump(doc)


@pytest.mark.slow
@pytest.mark.spark
def test_every_scenario_through_the_real_pipeline(tmp_path):
    udp_port, api_port = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_STREAM)
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(short_rules())
    env = {"HEALTHMON_DATA_DIR": str(tmp_path / "var"), "HEALTHMON_UDP_PORT": str(udp_port), "HEALTHMON_API_PORT": str(api_port),
           "HEALTHMON_ALERT_RULES_FILE": str(rules_file), **PIPELINE_ENV}
    api = f"http://127.0.0.1:{api_port}"
    fleet = {p.scenario: p.name for p in scenarios.make_profiles(7, 42, scenarios.parse_scenarios("all"))}
    sick = drives.make_drives(4, 42, DRIVE_SCENARIO)[-1]
    procs = [start_healthmon([part], env) for part in ("collect", "speed", "serve")]
    try:
        wait_until(lambda: requests.get(f"{api}/healthz", timeout=1).ok, 30, "API up")
        wait_until(lambda: (read_state(tmp_path / "var" / "state", "speed") or {}).get("state") == "streaming", 120, "speed job")
        procs.append(start_healthmon(["mock", "--target", f"127.0.0.1:{udp_port}", *MOCK_ARGS], env))

        def services() -> dict[str, dict]:
            return {s["service"]: s for s in requests.get(f"{api}/api/v1/services", timeout=5).json()["services"]}

        def hosts() -> dict[str, dict]:
            return {h["host"]: h for h in requests.get(f"{api}/api/v1/hosts", timeout=5).json()["hosts"]}

        def fresh() -> bool:
            """Both streams' latest messages are in the views: the speed job's slow first micro-batches are over."""
            steady, drive_hosts = services().get(fleet["steady"]), hosts()
            return (steady is not None and steady["silent_s"] < 4 and len(drive_hosts) == 2
                    and all(h["silent_s"] < 4 for h in drive_hosts.values()))

        # The first micro-batches with data take many seconds: every service would look stale or missing.
        wait_until(fresh, 120, "fresh health and drive latency in the views")
        procs.append(start_healthmon(["schedule", "--jobs", "alerts"], env))

        statuses: dict[str, list[str]] = defaultdict(list)  # each service's statuses, as they changed
        alerts: dict[int, dict] = {}

        def watch() -> bool:
            for name, service in services().items():
                if not statuses[name] or statuses[name][-1] != service["status"]:
                    statuses[name].append(service["status"])
            for alert in requests.get(f"{api}/api/v1/alerts", params={"state": "all"}, timeout=5).json()["alerts"]:
                alerts[alert["id"]] = alert
            return everything_shown()

        def of(rule: str, subject: str) -> list[dict]:
            return [a for a in alerts.values() if a["rule"] == rule and a["subject"] == subject]

        def fired(rule: str, subject: str, then_resolved: bool = False) -> bool:
            return any(a["fired_at"] is not None and (a["resolved_at"] is not None or not then_resolved) for a in of(rule, subject))

        def in_order(seen: list[str], wanted: list[str]) -> bool:
            rest = iter(seen)
            return all(status in rest for status in wanted)

        def everything_shown() -> bool:
            flaps = of("HighCpu", fleet["flapping"])
            return (
                fired("HighCpu", fleet["cpu_spike"], then_resolved=True)
                and fired("HighMemory", fleet["memory_leak"])
                and fired("DiskAlmostFull", fleet["disk_fill"])
                and fired("ServiceMissing", fleet["silent"])
                and in_order(statuses[fleet["silent"]], ["up", "stale", "missing"])
                and len([a for a in flaps if a["state"] == "resolved" and a["fired_at"] is None]) >= 2
                and any(fired("DriveLatencyDegraded", f"{sick.host}/{sick.device}/{op}") for op in ("read", "write"))
                and set(rejections()) >= set(scenarios.MALFORMATIONS)
            )

        def rejections() -> dict[str, int]:
            (collector,) = requests.get(f"{api}/api/v1/pipeline", timeout=5).json()["collectors"].values()
            return collector["rejected_by_reason"]

        try:
            wait_until(watch, 180, "every scenario's alert or status", interval=0.25)
        finally:
            print({name: seen for name, seen in statuses.items()})
            for alert in sorted(alerts.values(), key=lambda a: a["id"]):
                print(alert["rule"], alert["subject"], [(t["state"], round(t["at_ts"] % 1000, 1)) for t in alert["transitions"]])

        # flapping: HighCpu went pending and resolved, and never fired
        assert not fired("HighCpu", fleet["flapping"])
        # steady and malformed: no alert at all, and the malformed service is up (its good datagrams keep it so)
        subjects = {a["subject"] for a in alerts.values()}
        assert fleet["steady"] not in subjects and fleet["malformed"] not in subjects, of("ServiceStale", fleet["steady"])
        assert set(statuses[fleet["steady"]]) == set(statuses[fleet["malformed"]]) == {"up"}
        # the healthy drives: no alert
        assert not {s for s in subjects if s.count("/") == 2 and not s.startswith(f"{sick.host}/{sick.device}/")}
        # malformed: only its documented reasons, and each rejected datagram kept whole in the dead letters
        assert set(rejections()) == set(scenarios.MALFORMATIONS)
        wait_until(lambda: set(dead_letters(env)) == set(scenarios.MALFORMATIONS), 30, "dead letters of every reason")
        for reason, raws in dead_letters(env).items():
            assert all(fleet["malformed"].encode() in raw for raw in raws), reason
    finally:
        for proc in reversed(procs):
            stop_process(proc)


def dead_letters(env: dict[str, str]) -> dict[str, list[bytes]]:
    """The exact bytes of every dead-lettered datagram, by reason, read through the landing store."""
    store = landing_for(load_settings(environ=env))
    out: dict[str, list[bytes]] = defaultdict(list)
    for f in store.list_files("deadletter"):
        for line in store.read(f.path).splitlines():
            record = orjson.loads(line)
            out[record["reason"]].append(base64.b64decode(record["raw_b64"]))
    return out
