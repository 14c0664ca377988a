"""Alert rules, their evaluation over real view files with an injected clock, the alert store, and the alerts API.

The scenario publishes real DuckDB view files (``tests.test_merge_rule``)
minute by minute, evaluates a rules file at each minute and checks every
transition, the history kept in the SQLite store and the answers of
``/api/v1/alerts`` and ``/api/v1/rules`` through a real waitress server.
Webhook delivery is in ``tests/test_alert_webhooks.py``.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
import requests

from alerting.engine import AlertEvaluator
from alerting.rules import RulesError, RulesWatcher, load_rules, parse_duration, parse_rules
from alerting.store import AlertStore, connect_readonly, list_alerts
from healthmon.config import load_settings
from healthmon.sketch import LatencySketch
from healthmon.views import REALTIME_VIEW, update_view
from serving.app import create_app
from serving.disk_health import drive_health
from serving.params import iso
from serving.server import ApiServer
from tests.test_merge_rule import message, publish_realtime

T0 = 1704067200  # 2024-01-01T00:00:00Z
MINUTE = 60
END_MINUTE = 25  # the scenario evaluates at T0 + 1 min ... T0 + 25 min

SCENARIO_RULES = """
receivers:
  - name: ops
    url: "http://alerts:s3cret@127.0.0.1:9/hook"
rules:
  - name: HighCpu
    kind: metric
    metric: cpu_pct
    op: ">"
    threshold: 90
    over: 2m
    for: 5m
    labels: {team: web}
    summary: "{service}: CPU {value:.1f}% > {threshold:g}%"
  - name: CpuSpike
    kind: metric
    metric: cpu_pct
    op: ">="
    threshold: 90
    severity: info
    services: "ho*"
  - name: DiskAlmostFull
    kind: metric
    metric: disk_free_pct
    op: "<"
    threshold: 10
    for: 2m
    severity: critical
  - name: ServiceStale
    kind: liveness
    status: stale
    for: 1m
  - name: ServiceMissing
    kind: liveness
    target: services
    status: missing
    severity: critical
"""


def scenario_cpu(service: str, ts: float) -> float:
    minute = (ts - T0) // MINUTE
    if service == "hot":
        return 95.0 if ts < T0 + 15 * MINUTE else 20.0
    if service == "warm":
        return 95.0 if ts >= T0 + 20 * MINUTE else 30.0
    if service == "flap":
        return 95.0 if (minute // 3) % 2 == 0 else 20.0
    return 30.0


def scenario_messages() -> list[dict]:
    """Every 10 s (at :01, :11, ...) per service; 'gone' stops at T0 + 10 min; 'full' has 95 % of its disk used."""
    out = []
    for service in ("cool", "flap", "full", "gone", "hot", "warm"):
        for i in range(END_MINUTE * 6 + 6):
            ts = T0 + 10 * i + 1
            if service == "gone" and ts >= T0 + 10 * MINUTE:
                break
            out.append(message(service, ts, scenario_cpu(service, ts), disk=95.0 if service == "full" else 50.0))
    return out


def settings_for(data_dir: Path, rules_text: str, **overrides):
    rules = Path(data_dir) / "rules.yaml"
    rules.write_text(rules_text)
    return load_settings({"data_dir": str(data_dir), "alert_rules_file": str(rules), **overrides}, environ={})


def states(outcome) -> list[tuple[int, str, str, str]]:
    return outcome.transitions


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    """The scenario evaluated minute by minute over real view files."""
    settings = settings_for(tmp_path_factory.mktemp("alerts"), SCENARIO_RULES)
    # Published once: metric rules never read windows that start at or after now, and the services that
    # send until the end are 'up' whether their later messages are there or not ('gone' stopped long before).
    publish_realtime(settings.views_dir, scenario_messages(), 0)
    evaluator = AlertEvaluator(settings)
    outcomes = {}
    try:
        for minute in range(1, END_MINUTE + 1):
            outcomes[minute] = evaluator.evaluate(T0 + minute * MINUTE)
    finally:
        evaluator.close()
    return settings, outcomes


STALE_AFTER = 3 * 591 / 59  # 'gone': 60 messages from the window at T0 to T0 + 591 s -> interval 591/59 s


# ---------------------------------------------------------------- rules file


def test_the_bundled_rules_load():
    settings = load_settings(environ={})
    ruleset = load_rules(settings.alert_rules_path, settings)
    assert ruleset.receivers == ()
    got = {r.name: (r.kind, r.severity, r.for_s, r.metric, r.op, r.threshold, r.target, r.status) for r in ruleset.rules}
    assert got == {
        "HighCpu": ("metric", "warning", 300.0, "cpu_pct", ">", 90.0, None, None),
        "DiskAlmostFull": ("metric", "critical", 300.0, "disk_free_pct", "<", 10.0, None, None),
        "HighMemory": ("metric", "warning", 300.0, "ram_used_pct", ">", 90.0, None, None),
        "DriveLatencyDegraded": ("drive", "warning", 300.0, None, None, None, None, "degraded"),
        "ServiceMissing": ("liveness", "critical", 0.0, None, None, None, "services", "missing"),
        "HostMissing": ("liveness", "critical", 0.0, None, None, None, "hosts", "missing"),
        "ServiceStale": ("liveness", "warning", 0.0, None, None, None, "services", "stale"),
    }


@pytest.mark.parametrize("raw,seconds", [("30s", 30), ("5m", 300), ("1h30m", 5400), ("1d", 86400), ("250ms", 0.25), (90, 90),
                                         ("0s", 0), (1.5, 1.5)])
def test_durations(raw, seconds):
    assert parse_duration(raw) == seconds


@pytest.mark.parametrize("raw", ["5 minutes", "5", "-1s", "m", "", True, None, -3])
def test_bad_durations(raw):
    with pytest.raises(ValueError):
        parse_duration(raw)


HOT_RULES = "rules:\n  - {name: Hot, kind: metric, metric: cpu_pct, op: '>', threshold: 90}\n"
GOOD_RULE = "- {name: A, kind: metric, metric: cpu_pct, op: '>', threshold: 90}"

BAD_FILES = [
    ("rules: [", "not valid YAML"),
    ("- just a list", "the file must be a mapping"),
    ("alerts: []", "alerts: unknown top-level field"),
    ("rules: {A: 1}", "rules: must be a list"),
    ("rules:\n  - 3", "rules[0]: a rule is a mapping"),
    ("rules:\n  - {kind: metric}", "rules[0]: name: None is not a rule name"),
    ("rules:\n  - {name: 'bad name', kind: metric}", "rules[0]: name: 'bad name' is not a rule name"),
    ("rules:\n  - {name: A}", "rules[0] (A): kind: required (one of metric, liveness, drive)"),
    ("rules:\n  - {name: A, kind: gauge}", "rules[0] (A): kind: 'gauge' is not one of metric, liveness, drive"),
    ("rules:\n  - {name: A, kind: metric, op: '>', threshold: 90}", "rules[0] (A): metric: required"),
    ("rules:\n  - {name: A, kind: metric, metric: cpu, op: '>', threshold: 90}", "rules[0] (A): metric: 'cpu' is not one of"),
    ("rules:\n  - {name: A, kind: metric, metric: cpu_pct, op: '=>', threshold: 90}", "rules[0] (A): op: '=>' is not one of >, >=, <, <="),
    ("rules:\n  - {name: A, kind: metric, metric: cpu_pct, op: '>'}", "rules[0] (A): threshold: None: required, a number"),
    ("rules:\n  - {name: A, kind: metric, metric: cpu_pct, op: '>', threshold: high}", "rules[0] (A): threshold: 'high': required"),
    ("rules:\n  - {name: A, kind: metric, metric: cpu_pct, op: '>', threshold: 150}", "rules[0] (A): threshold: 150 is not a percentage"),
    (f"rules:\n  {GOOD_RULE}\n  - {{name: B, kind: metric, metric: cpu_pct, op: '>', threshold: 90, for: 5 minutes}}",
     "rules[1] (B): for: '5 minutes' is not a duration"),
    ("rules:\n  - {name: A, kind: metric, metric: cpu_pct, op: '>', threshold: 90, over: 30s}",
     "rules[0] (A): over: 30 s is shorter than one window (window_s=60)"),
    ("rules:\n  - {name: A, kind: metric, metric: cpu_pct, op: '>', threshold: 90, severity: page}",
     "rules[0] (A): severity: 'page' is not one of info, warning, critical"),
    ("rules:\n  - {name: A, kind: metric, metric: cpu_pct, op: '>', threshold: 90, threshhold: 80}",
     "rules[0] (A): threshhold: unknown field for a metric rule"),
    ("rules:\n  - {name: A, kind: metric, metric: cpu_pct, op: '>', threshold: 90, status: stale}",
     "rules[0] (A): status: unknown field for a metric rule"),
    ("rules:\n  - {name: A, kind: metric, metric: cpu_pct, op: '>', threshold: 90, labels: [a]}",
     "rules[0] (A): labels: a mapping of label names to text"),
    ("rules:\n  - {name: A, kind: metric, metric: cpu_pct, op: '>', threshold: 90, labels: {severity: page}}",
     "rules[0] (A): labels.severity: set by healthmon itself"),
    ("rules:\n  - {name: A, kind: metric, metric: cpu_pct, op: '>', threshold: 90, labels: {'team-x': a}}",
     "rules[0] (A): labels.team-x: not a label name"),
    ("rules:\n  - {name: A, kind: metric, metric: cpu_pct, op: '>', threshold: 90, summary: '{device} is slow'}",
     "rules[0] (A): summary: unknown field {device} (this kind has: rule, subject, severity, value, threshold, service, metric, op)"),
    ("rules:\n  - {name: A, kind: metric, metric: cpu_pct, op: '>', threshold: 90, summary: '{value:.1q}'}",
     "rules[0] (A): summary: bad template"),
    ("rules:\n  - {name: A, kind: metric, metric: cpu_pct, op: '>', threshold: 90, summary: '{service'}",
     "rules[0] (A): summary: bad template"),
    ("rules:\n  - {name: A, kind: metric, metric: cpu_pct, op: '>', threshold: 90, services: ''}",
     "rules[0] (A): services: '' is not a glob pattern"),
    ("rules:\n  - {name: A, kind: liveness}", "rules[0] (A): status: required (one of stale, missing)"),
    ("rules:\n  - {name: A, kind: liveness, status: down}", "rules[0] (A): status: 'down' is not one of stale, missing"),
    ("rules:\n  - {name: A, kind: liveness, target: pods, status: missing}", "rules[0] (A): target: 'pods' is not one of services, hosts"),
    ("rules:\n  - {name: A, kind: liveness, status: missing, hosts: 'h*'}",
     "rules[0] (A): hosts: a liveness rule with target services selects with 'services', not 'hosts'"),
    ("rules:\n  - {name: A, kind: liveness, target: hosts, status: missing, summary: '{service}'}",
     "rules[0] (A): summary: unknown field {service}"),
    ("rules:\n  - {name: A, kind: drive, status: degraded, op: '>'}", "rules[0] (A): op: unknown field for a drive rule"),
    ("rules:\n  - {name: A, kind: drive, status: slow}", "rules[0] (A): status: 'slow' is not one of warn, degraded"),
    (f"rules:\n  {GOOD_RULE}\n  {GOOD_RULE}", "rules[1] (A): name: used twice"),
    ("receivers: {ops: x}", "receivers: must be a list"),
    ("receivers:\n  - {name: ops, url: 'ftp://x/hook'}", "receivers[0] (ops): url: 'ftp://x/hook' is not an http:// or https:// URL"),
    ("receivers:\n  - {name: ops}", "receivers[0] (ops): url: None is not an http"),
    ("receivers:\n  - {name: ops, url: 'http://x/', token: abc}", "receivers[0]: token: unknown field for a receiver"),
    ("receivers:\n  - {name: ops, url: 'http://x/'}\n  - {name: ops, url: 'http://y/'}", "receivers[1] (ops): name: used twice"),
]


@pytest.mark.parametrize("text,problem", BAD_FILES, ids=[p for _, p in BAD_FILES])
def test_a_bad_rules_file_is_refused_naming_the_file_rule_and_field(tmp_path, text, problem):
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    with pytest.raises(RulesError) as info:
        load_rules(path, load_settings(environ={}))
    message = str(info.value)
    assert message.startswith(f"alert rules {path}: "), message
    assert problem in message, message


def test_a_missing_rules_file_is_refused(tmp_path):
    with pytest.raises(RulesError, match=f"alert rules {tmp_path / 'nope.yaml'}: cannot read"):
        load_rules(tmp_path / "nope.yaml", load_settings(environ={}))


def test_an_empty_rules_file_has_no_rules():
    ruleset = parse_rules("# nothing yet\n", Path("x.yaml"), load_settings(environ={}))
    assert ruleset.rules == () and ruleset.receivers == ()


def test_a_bad_edit_keeps_the_previous_rules_until_a_good_one(tmp_path, caplog):
    path = tmp_path / "rules.yaml"
    path.write_text(f"rules:\n  {GOOD_RULE}\n")
    watcher = RulesWatcher(path, load_settings(environ={}))
    assert [r.name for r in watcher.current().rules] == ["A"]
    path.write_text(f"rules:\n  {GOOD_RULE.replace('cpu_pct', 'cpu')}\n")
    with caplog.at_level(logging.ERROR, logger="alerting.rules"):
        assert [r.name for r in watcher.current().rules] == ["A"]
        assert [r.name for r in watcher.current().rules] == ["A"]
    assert watcher.error == f"alert rules {path}: rules[0] (A): metric: 'cpu' is not one of cpu_pct, ram_used_pct, disk_used_pct, " \
                            "disk_free_pct"
    assert [r.getMessage() for r in caplog.records] == [f"{watcher.error} (keeping the previous rules)"]  # once per change
    path.write_text(f"rules:\n  {GOOD_RULE.replace('A', 'B')}\n")
    assert [r.name for r in watcher.current().rules] == ["B"] and watcher.error is None


def test_a_file_caught_while_rewritten_in_place_is_not_taken(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text(f"rules:\n  {GOOD_RULE}\n")
    watcher = RulesWatcher(path, load_settings(environ={}))
    path.write_text("")  # truncated, not written yet: not "no rules"
    assert [r.name for r in watcher.current().rules] == ["A"] and watcher.error is None
    path.write_text("rules: []\n")
    assert watcher.current().rules == ()


# ---------------------------------------------------------------- evaluation and the state machine


def test_transitions_of_the_scenario_minute_by_minute(scenario):
    _, outcomes = scenario
    got = {minute: states(o) for minute, o in outcomes.items() if o.transitions}
    assert got == {
        1: [(1, "HighCpu", "flap", "pending"), (2, "HighCpu", "hot", "pending"), (3, "CpuSpike", "hot", "pending"),
            (3, "CpuSpike", "hot", "firing"), (4, "DiskAlmostFull", "full", "pending")],
        3: [(4, "DiskAlmostFull", "full", "firing")],
        4: [(1, "HighCpu", "flap", "resolved")],
        6: [(2, "HighCpu", "hot", "firing")],
        8: [(5, "HighCpu", "flap", "pending")],
        10: [(5, "HighCpu", "flap", "resolved")],
        11: [(6, "ServiceStale", "gone", "pending")],
        12: [(6, "ServiceStale", "gone", "firing")],
        14: [(7, "HighCpu", "flap", "pending")],
        15: [(8, "ServiceMissing", "gone", "pending"), (8, "ServiceMissing", "gone", "firing")],
        16: [(7, "HighCpu", "flap", "resolved"), (2, "HighCpu", "hot", "resolved"), (3, "CpuSpike", "hot", "resolved")],
        20: [(9, "HighCpu", "flap", "pending")],
        22: [(9, "HighCpu", "flap", "resolved"), (10, "HighCpu", "warm", "pending")],
    }
    assert all(o.skipped_rules == [] and o.pruned == 0 for o in outcomes.values())
    assert outcomes[1].queued == 5  # one receiver, one outbox row per transition


def _stored(settings) -> dict[int, dict]:
    con = connect_readonly(settings.alerts_db)
    try:
        return {a["id"]: a for a in list_alerts(con, 0)}
    finally:
        con.close()


def test_the_store_keeps_each_alert_with_its_history(scenario):
    settings, _ = scenario
    alerts = _stored(settings)
    hot = alerts[2]
    assert {k: hot[k] for k in ("rule", "subject", "kind", "severity", "state", "labels", "summary", "value", "threshold")} == {
        "rule": "HighCpu", "subject": "hot", "kind": "metric", "severity": "warning", "state": "resolved",
        "labels": {"alertname": "HighCpu", "severity": "warning", "service": "hot", "team": "web"},
        "summary": "hot: CPU 95.0% > 90%",  # as it was while active
        "value": 57.5,  # at resolution: one window at 95 %, one at 20 %
        "threshold": 90.0,
    }
    assert (hot["started_at"], hot["fired_at"], hot["resolved_at"]) == (T0 + 60, T0 + 360, T0 + 960)
    assert hot["transitions"] == [
        {"seq": 1, "state": "pending", "at": T0 + 60, "value": 95.0},
        {"seq": 2, "state": "firing", "at": T0 + 360, "value": 95.0},
        {"seq": 3, "state": "resolved", "at": T0 + 960, "value": 57.5},
    ]
    # for: 0s fires at the first evaluation, the pending transition still recorded
    assert [(t["state"], t["at"]) for t in alerts[3]["transitions"]] == [("pending", T0 + 60), ("firing", T0 + 60), ("resolved", T0 + 960)]
    assert alerts[4]["value"] == 5.0 and alerts[4]["summary"] == "full: disk_free_pct 5.0 < 10"  # the default summary


def test_a_flapping_condition_never_fires(scenario):
    settings, _ = scenario
    flaps = [a for a in _stored(settings).values() if a["subject"] == "flap"]
    assert sorted(a["started_at"] for a in flaps) == [T0 + 60, T0 + 480, T0 + 840, T0 + 1200]
    for alert in flaps:  # each instance pending for 2-3 minutes, less than its 5 minute 'for'
        assert alert["state"] == "resolved" and alert["fired_at"] is None
        assert [t["state"] for t in alert["transitions"]] == ["pending", "resolved"]
        assert alert["transitions"][1]["value"] == 57.5


def test_a_silent_service_is_stale_then_also_missing(scenario):
    settings, _ = scenario
    alerts = _stored(settings)
    stale, missing = alerts[6], alerts[8]
    assert stale["summary"] == "service gone is missing (silent for 909 s)"  # the status got worse, the alert stays
    assert stale["threshold"] == pytest.approx(STALE_AFTER) and stale["value"] == 909.0
    assert [(t["state"], t["at"], t["value"]) for t in stale["transitions"]] == [("pending", T0 + 660, 69.0), ("firing", T0 + 720, 129.0)]
    assert missing["threshold"] == 300.0 and missing["labels"] == {"alertname": "ServiceMissing", "severity": "critical", "service": "gone"}
    assert [(t["state"], t["at"], t["value"]) for t in missing["transitions"]] == [
        ("pending", T0 + 900, 309.0), ("firing", T0 + 900, 309.0)]


def test_a_resolved_alert_that_comes_back_is_a_new_alert_and_a_removed_rule_resolves_its_alerts(tmp_path):
    settings = settings_for(tmp_path, HOT_RULES)
    evaluator = AlertEvaluator(settings)
    try:
        hot = [message("s", T0 + i, 95.0) for i in range(0, 120, 10)]
        publish_realtime(settings.views_dir, hot, 0)
        first = evaluator.evaluate(T0 + 120)
        publish_realtime(settings.views_dir, hot + [message("s", T0 + 120 + i, 10.0) for i in range(0, 120, 10)], 0)
        cleared = evaluator.evaluate(T0 + 240)
        publish_realtime(settings.views_dir, hot + [message("s", T0 + 120 + i, 99.0) for i in range(0, 240, 10)], 0)
        again = evaluator.evaluate(T0 + 360)
        Path(settings.alert_rules_file).write_text("rules: []\n")
        removed = evaluator.evaluate(T0 + 361)
    finally:
        evaluator.close()
    assert states(first) == [(1, "Hot", "s", "pending"), (1, "Hot", "s", "firing")]
    assert states(cleared) == [(1, "Hot", "s", "resolved")]
    assert states(again) == [(2, "Hot", "s", "pending"), (2, "Hot", "s", "firing")]
    assert states(removed) == [(2, "Hot", "s", "resolved")]
    assert _stored(settings)[2]["transitions"][-1] == {"seq": 3, "state": "resolved", "at": T0 + 361, "value": None}
    assert _stored(settings)[2]["value"] == 99.0  # a resolution without a value keeps the last one


def _drive_rows(host: str, device: str, window_start: int, latency_us: float) -> tuple[dict, list[tuple]]:
    sketch = LatencySketch()
    sketch.add(latency_us, 100)
    total = {"host": host, "device": device, "op": "read", "window_start": window_start, "messages": 1, "count": 100,
             "sum_us": latency_us * 100, "max_us": latency_us, "sketched_count": 100, "source": "mock", "last_ts": window_start + 30.0}
    buckets = [(host, device, "read", bucket, window_start, count) for bucket, count in sketch.to_pairs()]
    return total, buckets


def publish_drives(views_dir: Path, rows: list[tuple[str, str, int, float]]) -> None:
    """Add one disk_latency interval per (host, device, window_start, latency) to the published real-time view."""
    totals, buckets = [], []
    for host, device, window_start, latency in rows:
        total, bucket_rows = _drive_rows(host, device, window_start, latency)
        totals.append(total)
        buckets += bucket_rows
    totals_table = pa.Table.from_pylist(totals)
    buckets_table = pa.Table.from_pylist([dict(zip(("host", "device", "op", "bucket", "window_start", "count"), b, strict=True))
                                          for b in buckets])

    def change(con):
        for table, data in (("disk_latency_window", totals_table), ("disk_latency_bucket_window", buckets_table)):
            con.register("_rows", data)
            con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM _rows")
            con.unregister("_rows")

    update_view(Path(views_dir) / REALTIME_VIEW, change)


DRIVE_RULES = """
rules:
  - {name: DriveLatencyDegraded, kind: drive, status: degraded, for: 5m}
  - {name: DriveLatencyWarn, kind: drive, status: warn, severity: info, hosts: "h1"}
  - {name: HostMissing, kind: liveness, target: hosts, status: missing, severity: critical}
"""


def test_drive_and_host_rules_judge_as_the_disk_health_endpoint(tmp_path):
    settings = settings_for(tmp_path, DRIVE_RULES)
    now = T0 + 2 * 3600
    rows = []
    for minute in range(1, 121):  # two hours: h1/d0 and h2/d0 steady at 100 µs; h1/d1 at 100 µs, then 10x in the last 10 min
        ws = now - minute * MINUTE
        rows.append(("h1", "d0", ws, 100.0))
        rows.append(("h1", "d1", ws, 1000.0 if minute <= 10 else 100.0))
        if minute > 20:  # h3 stopped sending 20 minutes ago: missing, and no recent latency to judge
            rows.append(("h3", "d0", ws, 100.0))
        rows.append(("h2", "d0", ws, 100.0))
    publish_realtime(settings.views_dir, [], 0)
    publish_drives(settings.views_dir, rows)
    evaluator = AlertEvaluator(settings)
    try:
        first = evaluator.evaluate(now)
        later = evaluator.evaluate(now + 300)
        con = evaluator.reader.connection()
        verdicts = {(d["host"], d["device"]): d for d in drive_health(con, now + 300, settings)["devices"]}
    finally:
        evaluator.close()
    assert states(first) == [
        (1, "DriveLatencyDegraded", "h1/d1/read", "pending"),
        (2, "DriveLatencyWarn", "h1/d1/read", "pending"), (2, "DriveLatencyWarn", "h1/d1/read", "firing"),
        (3, "HostMissing", "h3", "pending"), (3, "HostMissing", "h3", "firing"),
    ]
    assert states(later) == [(1, "DriveLatencyDegraded", "h1/d1/read", "firing")]
    assert verdicts[("h1", "d1")]["status"] == "degraded" and {v["status"] for k, v in verdicts.items() if k != ("h1", "d1")} == {"ok"}
    alerts = _stored(settings)
    degraded = alerts[1]
    assert degraded["value"] == verdicts[("h1", "d1")]["score"] and degraded["value"] > 9  # ~10x its baseline and the fleet
    assert degraded["threshold"] == settings.disk_degraded_ratio and alerts[2]["threshold"] == settings.disk_warn_ratio
    assert degraded["labels"] == {"alertname": "DriveLatencyDegraded", "severity": "warning", "host": "h1", "device": "d1", "op": "read"}
    assert degraded["summary"] == f"h1/d1: {verdicts[('h1', 'd1')]['reason']}"
    assert alerts[3]["summary"] == "host h3 is missing (silent for 1530 s)" and alerts[3]["labels"]["host"] == "h3"


def test_a_rule_that_cannot_be_read_leaves_its_alerts_alone(tmp_path):
    settings = settings_for(tmp_path, HOT_RULES)
    publish_realtime(settings.views_dir, [message("s", T0 + i, 95.0) for i in range(0, 120, 10)], 0)
    evaluator = AlertEvaluator(settings)
    try:
        assert states(evaluator.evaluate(T0 + 120)) == [(1, "Hot", "s", "pending"), (1, "Hot", "s", "firing")]
        bare = tmp_path / "bare.duckdb"
        duckdb.connect(str(bare)).close()
        os.replace(bare, settings.views_dir / REALTIME_VIEW)  # a DuckDB file without the view's tables, published as writers do
        broken = evaluator.evaluate(T0 + 180)
    finally:
        evaluator.close()
    assert broken.transitions == [] and broken.skipped_rules == ["Hot"]
    assert _stored(settings)[1]["state"] == "firing"


def test_old_resolved_alerts_are_pruned_with_their_history_and_outbox(tmp_path):
    rules = f"receivers: [{{name: r, url: 'http://127.0.0.1:9/'}}]\n{HOT_RULES}"
    settings = settings_for(tmp_path, rules, alert_history_days=1)
    publish_realtime(settings.views_dir, [message("s", T0 + i, 95.0) for i in range(0, 120, 10)], 0)
    evaluator = AlertEvaluator(settings)
    try:
        evaluator.evaluate(T0 + 120)
        evaluator.evaluate(T0 + 600)  # no data: resolved at T0 + 600
        assert [len(_stored(settings)), len(evaluator.store.outbox())] == [1, 3]
        assert evaluator.evaluate(T0 + 600 + 86400).pruned == 0  # exactly one day: kept
        assert evaluator.evaluate(T0 + 601 + 86400).pruned == 1
        counts = [evaluator.store.con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("alerts", "transitions", "outbox")]
    finally:
        evaluator.close()
    assert counts == [0, 0, 0]


# ---------------------------------------------------------------- the API


@pytest.fixture(scope="module")
def api(scenario):
    settings, _ = scenario
    settings = load_settings({"data_dir": settings.data_dir, "alert_rules_file": settings.alert_rules_file, "api_port": 0}, environ={})
    server = ApiServer(settings, create_app(settings, clock=lambda: T0 + END_MINUTE * MINUTE))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.url
    server.stop(wait=10)


def get(url: str, status: int = 200, **params) -> dict:
    resp = requests.get(url, params=params, timeout=10)
    assert resp.status_code == status, resp.text
    assert resp.headers["Content-Type"] == "application/json"
    return resp.json()


def test_api_active_alerts(api):
    answer = get(f"{api}/api/v1/alerts")
    assert answer == get(f"{api}/api/v1/alerts", state="active")
    now = T0 + END_MINUTE * MINUTE
    assert answer["now"] == "2024-01-01T00:25:00Z" and answer["now_ts"] == now
    assert [(a["id"], a["rule"], a["subject"], a["state"]) for a in answer["alerts"]] == [
        (8, "ServiceMissing", "gone", "firing"),  # firing, the latest to fire first
        (6, "ServiceStale", "gone", "firing"),
        (4, "DiskAlmostFull", "full", "firing"),
        (10, "HighCpu", "warm", "pending"),
    ]
    assert answer["alerts"][3] == {
        "id": 10, "rule": "HighCpu", "subject": "warm", "severity": "warning", "state": "pending",
        "labels": {"alertname": "HighCpu", "severity": "warning", "service": "warm", "team": "web"},
        "summary": "warm: CPU 95.0% > 90%", "value": 95.0, "threshold": 90.0,
        "started_at": "2024-01-01T00:22:00Z", "started_at_ts": T0 + 1320,
        "fired_at": None, "fired_at_ts": None, "resolved_at": None, "resolved_at_ts": None,
        "transitions": [{"state": "pending", "at": "2024-01-01T00:22:00Z", "at_ts": T0 + 1320, "value": 95.0}],
    }
    missing = answer["alerts"][0]
    assert (missing["value"], missing["threshold"], missing["fired_at"]) == (909.0, 300.0, "2024-01-01T00:15:00Z")
    assert [t["at"] for t in missing["transitions"]] == [iso(T0 + 900)] * 2


def test_api_all_alerts_adds_the_resolved_ones(api):
    answer = get(f"{api}/api/v1/alerts", state="all")
    assert [(a["id"], a["state"]) for a in answer["alerts"]] == [
        (8, "firing"), (6, "firing"), (4, "firing"), (10, "pending"),
        (9, "resolved"), (7, "resolved"), (3, "resolved"), (2, "resolved"), (5, "resolved"), (1, "resolved"),  # newest resolution first
    ]
    hot = next(a for a in answer["alerts"] if a["id"] == 2)
    assert (hot["fired_at"], hot["resolved_at"], hot["resolved_at_ts"], hot["value"]) == ("2024-01-01T00:06:00Z", "2024-01-01T00:16:00Z",
                                                                                         T0 + 960, 57.5)
    assert [(t["state"], t["at"]) for t in hot["transitions"]] == [
        ("pending", "2024-01-01T00:01:00Z"), ("firing", "2024-01-01T00:06:00Z"), ("resolved", "2024-01-01T00:16:00Z")]


def test_api_rules(api, scenario):
    settings, _ = scenario
    answer = get(f"{api}/api/v1/rules")
    assert answer["file"] == settings.alert_rules_file
    assert answer["receivers"] == [{"name": "ops", "url": "http://alerts:***@127.0.0.1:9/hook"}]
    assert answer["rules"] == [
        {"name": "HighCpu", "kind": "metric", "severity": "warning", "for_s": 300.0, "labels": {"team": "web"},
         "summary": "{service}: CPU {value:.1f}% > {threshold:g}%", "metric": "cpu_pct", "op": ">", "threshold": 90.0, "over_s": 120.0,
         "services": "*"},
        {"name": "CpuSpike", "kind": "metric", "severity": "info", "for_s": 0.0, "labels": {},
         "summary": "{service}: {metric} {value:.1f} {op} {threshold:g}", "metric": "cpu_pct", "op": ">=", "threshold": 90.0,
         "over_s": 120.0, "services": "ho*"},
        {"name": "DiskAlmostFull", "kind": "metric", "severity": "critical", "for_s": 120.0, "labels": {},
         "summary": "{service}: {metric} {value:.1f} {op} {threshold:g}", "metric": "disk_free_pct", "op": "<", "threshold": 10.0,
         "over_s": 120.0, "services": "*"},
        {"name": "ServiceStale", "kind": "liveness", "severity": "warning", "for_s": 60.0, "labels": {},
         "summary": "service {service} is {status} (silent for {value:.0f} s)", "target": "services", "status": "stale", "services": "*"},
        {"name": "ServiceMissing", "kind": "liveness", "severity": "critical", "for_s": 0.0, "labels": {},
         "summary": "service {service} is {status} (silent for {value:.0f} s)", "target": "services", "status": "missing",
         "services": "*"},
    ]


@pytest.mark.parametrize("path,params,message", [
    ("/api/v1/alerts", {"state": "firing"}, "state='firing': must be one of active, all"),
    ("/api/v1/alerts", {"states": "all"}, "unknown parameter 'states' (known: state)"),
    ("/api/v1/rules", {"name": "HighCpu"}, "unknown parameter 'name' (known: none)"),
])
def test_api_bad_parameters(api, path, params, message):
    answer = get(f"{api}{path}", 400, **params)
    assert answer == {"error": {"code": "bad_parameter", "message": message}}


def test_api_without_an_alert_store_answers_no_alerts(tmp_path):
    settings = load_settings({"data_dir": str(tmp_path)}, environ={})
    client = create_app(settings, clock=lambda: T0).test_client()
    assert client.get("/api/v1/alerts?state=all").get_json() == {"now": "2024-01-01T00:00:00Z", "now_ts": T0, "alerts": []}
    assert not settings.alerts_db.exists()
    assert [r["name"] for r in client.get("/api/v1/rules").get_json()["rules"]][:2] == ["HighCpu", "DiskAlmostFull"]  # the bundled file


def test_api_with_a_bad_rules_file(tmp_path):
    settings = settings_for(tmp_path, "rules: [")
    client = create_app(settings, clock=lambda: T0).test_client()
    resp = client.get("/api/v1/rules")
    assert resp.status_code == 500
    assert resp.get_json()["error"]["message"].startswith(f"alert rules {settings.alert_rules_file}: not valid YAML")


def test_the_store_is_read_while_it_is_written(tmp_path):
    """A reader sees each evaluation whole: the API reads while the writer is in the middle of a transaction."""
    store = AlertStore(tmp_path / "a.sqlite")
    try:
        with store.transaction():
            alert_id = store.open_alert(rule="R", subject="s", kind="metric", severity="info", labels={}, fingerprint="f", summary="x",
                                        value=1.0, threshold=0.0, now=T0)
            con = connect_readonly(tmp_path / "a.sqlite")
            assert list_alerts(con, 0) == []  # not committed yet: invisible, and no lock error
            store.add_transition(alert_id, "pending", T0, 1.0)
        assert [a["state"] for a in list_alerts(con, 0)] == ["pending"]
        con.close()
    finally:
        store.close()
    assert os.path.exists(tmp_path / "a.sqlite")
