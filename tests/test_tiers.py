"""Tiers: after retention, long ranges are answered from the rollups that are left, whole, and say so.

Real DuckDB view files: 40 days of health and drive-latency messages are
aggregated in plain Python into minute windows, hour and day rollups (batch
view below the horizon, real-time view above it); then the real retention
deletes minute windows older than 7 days and hour rollups older than 20 days.
The API's answers over old ranges must equal a computation straight from the
messages over the range they say they cover (``effective_from``/``effective_to``),
with the step and tier they say they used.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict

import duckdb
import pytest

from batch_jobs.retention import TierCutoffs, apply_retention, read_tier_cutoffs
from healthmon import sketch
from healthmon.config import load_settings
from healthmon.landing import landing_for
from healthmon.views import BATCH_VIEW, DISK_LATENCY, DISK_LATENCY_BUCKET, REALTIME_VIEW, update_view
from serving import queries
from serving.app import create_app
from serving.params import iso
from tests.test_merge_rule import (
    assert_series,
    assert_summary,
    disk_window_rows,
    expected_series,
    expected_summary,
    insert_table,
    make_messages,
    publish_batch,
    publish_realtime,
)

W = 60
HOUR = 3600
DAY = 86400
T0 = 1704067200  # 2024-01-01T00:00:00Z
NOW = T0 + 40 * DAY + 12 * HOUR + 1800
HORIZON = T0 + 40 * DAY + 11 * HOUR
WINDOW_CUT = T0 + 33 * DAY + 12 * HOUR  # floor to the hour of NOW - 7 days
HOUR_CUT = T0 + 20 * DAY  # floor to the day of NOW - 20 days
SETTINGS = {"retention_window_days": 7, "retention_hour_days": 20, "retention_day_days": 3650}

HEALTH_MESSAGES = make_messages(T0, NOW, services=("api", "db"), seed=7, mean_gap=600)


def _disk_messages() -> list[dict]:
    rng = random.Random(8)
    out, ts = [], T0 + 5.0
    while ts < NOW:
        count = rng.randint(0, 40)
        mean_only = rng.random() < 0.1
        buckets: dict[int, int] = defaultdict(int)
        for _ in range(count):
            buckets[rng.randint(100, 220)] += 1
        latencies = [sketch.bucket_value(b) for b, c in buckets.items() for _ in range(c)]
        out.append({
            "host": "h1", "device": "sda", "op": rng.choice(["read", "write"]), "ts": round(ts, 3), "count": count,
            "sum_us": float(sum(latencies)), "max_us": max(latencies, default=0.0),
            "buckets": [] if mean_only else sorted(buckets.items()), "source": "mock",
        })
        ts += rng.uniform(300, 1500)
    return out


DISK_MESSAGES = _disk_messages()


def publish_disk(views_dir) -> None:
    """Drive-latency windows below the horizon and their rollups into the batch view; the rest into the real-time view."""
    windows, bucket_rows = disk_window_rows(DISK_MESSAGES)

    def batch(con):
        for spec, rows in ((DISK_LATENCY, windows), (DISK_LATENCY_BUCKET, bucket_rows)):
            insert_table(con, spec.table(), spec.columns, [r for r in rows if r["window_start"] < HORIZON])
            keys = ", ".join(spec.key_names[:-1])
            for grain, unit in (("hour", HOUR), ("day", DAY)):
                con.execute(
                    f"INSERT INTO {spec.table(grain)} SELECT {keys}, window_start // {unit} * {unit} AS ws, {spec.merge_select()} "
                    f"FROM {spec.table()} GROUP BY ALL"
                )

    def realtime(con):
        for spec, rows in ((DISK_LATENCY, windows), (DISK_LATENCY_BUCKET, bucket_rows)):
            insert_table(con, spec.table(), spec.columns, [r for r in rows if r["window_start"] >= HORIZON])

    update_view(views_dir / BATCH_VIEW, batch)
    update_view(views_dir / REALTIME_VIEW, realtime)


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    settings = load_settings({"data_dir": str(tmp_path_factory.mktemp("tiers")), **SETTINGS}, environ={})
    publish_batch(settings.views_dir, HEALTH_MESSAGES, HORIZON)
    publish_realtime(settings.views_dir, HEALTH_MESSAGES, HORIZON)
    publish_disk(settings.views_dir)
    apply_retention(settings, landing_for(settings), now=NOW)
    return settings


@pytest.fixture(scope="module")
def client(settings):
    return create_app(settings, clock=lambda: NOW).test_client()


def get(client, url: str, **params) -> dict:
    resp = client.get(url, query_string=params)
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()


def assert_effective(answer: dict, frm: float, to: float, tier: str) -> None:
    assert answer["tier"] == tier
    assert (answer["effective_from_ts"], answer["effective_to_ts"]) == (frm, to)
    assert (answer["effective_from"], answer["effective_to"]) == (iso(frm), iso(to))


# ---------------------------------------------------------------- tests


def test_retention_left_only_rollups_for_old_ranges(settings):
    con = duckdb.connect(str(settings.views_dir / BATCH_VIEW), read_only=True)
    try:
        for family in ("health", "disk_latency", "disk_latency_bucket"):
            below, above = con.execute(
                f"SELECT count(*) FILTER (window_start < {WINDOW_CUT}), count(*) FILTER (window_start >= {WINDOW_CUT}) FROM {family}_window"
            ).fetchone()
            assert below == 0 and above > 0, family
            below, above = con.execute(
                f"SELECT count(*) FILTER (window_start < {HOUR_CUT}), count(*) FILTER (window_start >= {HOUR_CUT}) FROM {family}_hour"
            ).fetchone()
            assert below == 0 and above > 0, family
            assert con.execute(f"SELECT min(window_start) FROM {family}_day").fetchone()[0] == T0, family
        assert read_tier_cutoffs(con) == TierCutoffs(window=WINDOW_CUT, hour=HOUR_CUT, day=T0 + 40 * DAY - 3650 * DAY)
    finally:
        con.close()


def test_a_30_day_series_reads_day_rollups_whole(client):
    frm, to = NOW - 30 * DAY, NOW
    answer = get(client, "/api/v1/services/api/series", **{"from": frm, "to": to})
    assert (answer["step"], answer["step_s"], answer["step_requested"]) == ("1d", DAY, None)
    assert (answer["from_ts"], answer["to_ts"]) == (frm, to)  # as asked
    assert_effective(answer, T0 + 10 * DAY, to, "day")  # the start rounded down to its day; the end is in the minute tier
    expected = expected_series(HEALTH_MESSAGES, "api", T0 + 10 * DAY, to, DAY)
    assert len(expected) == 31
    assert_series(answer, expected)
    assert sum(p["count"] for p in answer["points"]) == sum(
        1 for m in HEALTH_MESSAGES if m["service"] == "api" and T0 + 10 * DAY <= m["ts"] // W * W < to
    )


@pytest.mark.parametrize("asked", ["60s", "5m", "1h", "60"])
def test_an_asked_finer_step_over_expired_windows_is_raised_and_says_so(client, asked):
    day_range = {"from": NOW - 30 * DAY, "to": NOW, "step": asked}
    answer = get(client, "/api/v1/services/db/series", **day_range)
    assert (answer["step"], answer["step_requested"], answer["tier"]) == ("1d", "60s" if asked == "60" else asked, "day")
    assert_series(answer, expected_series(HEALTH_MESSAGES, "db", T0 + 10 * DAY, NOW, DAY))
    # Between the cutoffs (windows gone, hour rollups kept): at least an hour.
    frm, to = NOW - 12 * DAY - 1234.5, NOW - 9 * DAY + 77
    answer = get(client, "/api/v1/services/db/series", **{"from": frm, "to": to, "step": asked})
    assert answer["step"] == "1h" and answer["tier"] == "hour"
    lo, hi = math.floor(math.ceil(frm) / HOUR) * HOUR, math.ceil(math.ceil(to) / HOUR) * HOUR
    assert_effective(answer, lo, hi, "hour")
    assert_series(answer, expected_series(HEALTH_MESSAGES, "db", lo, hi, HOUR))


def test_the_default_step_is_raised_too(client):
    """One day between the cutoffs would get 5 m steps (288 points); its windows are gone, so 1 h."""
    frm, to = NOW - 10 * DAY, NOW - 9 * DAY
    answer = get(client, "/api/v1/services/api/series", **{"from": frm, "to": to})
    assert (answer["step"], answer["step_requested"]) == ("1h", None)
    assert_effective(answer, T0 + 30 * DAY + 12 * HOUR, T0 + 31 * DAY + 13 * HOUR, "hour")
    assert len(answer["points"]) == 25
    assert_series(answer, expected_series(HEALTH_MESSAGES, "api", T0 + 30 * DAY + 12 * HOUR, T0 + 31 * DAY + 13 * HOUR, HOUR))


def test_a_day_bucket_across_the_window_cutoff_adds_hours_and_windows(client):
    frm = NOW - 12 * DAY
    answer = get(client, "/api/v1/services/api/series", **{"from": frm, "to": NOW, "step": "1d"})
    assert answer["step_requested"] == "1d"
    assert_effective(answer, T0 + 28 * DAY + 12 * HOUR, NOW, "hour")
    assert WINDOW_CUT % DAY and any(p["ts"] < WINDOW_CUT < p["ts"] + DAY for p in answer["points"])
    assert_series(answer, expected_series(HEALTH_MESSAGES, "api", T0 + 28 * DAY + 12 * HOUR, NOW, DAY))


def test_recent_ranges_are_untouched(client):
    frm, to = NOW - 2 * HOUR - 30.5, NOW
    answer = get(client, "/api/v1/services/api/series", **{"from": frm, "to": to})
    assert (answer["step"], answer["step_requested"]) == ("60s", None)
    assert_effective(answer, frm, to, "window")
    assert_series(answer, expected_series(HEALTH_MESSAGES, "api", frm, to, W))
    summary = get(client, "/api/v1/summary", **{"from": frm, "to": to})
    assert_effective(summary, frm, to, "window")
    assert_summary(summary, expected_summary(HEALTH_MESSAGES, frm, to))


@pytest.mark.parametrize(
    "frm,to,lo,hi,tier",
    [
        (NOW - 25 * DAY - 1234.5, NOW - 22 * DAY + 100, T0 + 15 * DAY, T0 + 19 * DAY, "day"),  # both ends rounded to days
        (NOW - 30 * DAY, NOW - 15 * DAY, T0 + 10 * DAY, T0 + 25 * DAY + 13 * HOUR, "day"),  # the end in the hour tier: to hours
        (NOW - 13 * DAY + 61, NOW - 8 * DAY - 61, T0 + 27 * DAY + 12 * HOUR, T0 + 32 * DAY + 13 * HOUR, "hour"),
        (NOW - 8 * DAY, NOW - 3 * DAY + 7, T0 + 32 * DAY + 12 * HOUR, NOW - 3 * DAY + 7, "hour"),  # the end in the minute tier
    ],
)
def test_summaries_over_old_ranges_count_whole_hours_or_days(client, frm, to, lo, hi, tier):
    answer = get(client, "/api/v1/summary", **{"from": frm, "to": to})
    assert (answer["from_ts"], answer["to_ts"]) == (frm, to)
    assert_effective(answer, lo, hi, tier)
    assert_summary(answer, expected_summary(HEALTH_MESSAGES, lo, hi))


def expected_latency(op: str, lo: int, hi: int, step: int) -> dict[int, dict]:
    groups: dict[int, list[dict]] = defaultdict(list)
    for m in DISK_MESSAGES:
        ws = m["ts"] // W * W
        if m["op"] == op and lo <= ws < hi:
            groups[int(ws // step * step)].append(m)
    out = {}
    for start, msgs in groups.items():
        pairs: dict[int, int] = defaultdict(int)
        for m in msgs:
            for b, c in m["buckets"]:
                pairs[b] += c
        count = sum(m["count"] for m in msgs)
        out[start] = {"count": count, "sum_us": sum(m["sum_us"] for m in msgs), "max_us": max(m["max_us"] for m in msgs),
                      "sketched_count": sum(m["count"] for m in msgs if m["buckets"]),
                      **{name: sketch.quantile(pairs.items(), q) for name, q in (("p50_us", 0.5), ("p95_us", 0.95), ("p99_us", 0.99))}}
    return out


def test_drive_latency_over_30_days_reads_day_rollups_whole(client):
    answer = get(client, "/api/v1/disks/h1/sda/latency", **{"from": NOW - 30 * DAY, "to": NOW, "step": "60s", "op": "read"})
    assert (answer["step"], answer["step_requested"]) == ("1d", "60s")
    assert_effective(answer, T0 + 10 * DAY, NOW, "day")
    expected = expected_latency("read", T0 + 10 * DAY, NOW, DAY)
    assert [p["ts"] for p in answer["points"]] == [T0 + (10 + i) * DAY for i in range(31)]
    assert {p["ts"] for p in answer["points"] if p["count"]} == {s for s, e in expected.items() if e["count"]}
    for point in answer["points"]:
        exp = expected.get(point["ts"])
        if exp is None:
            assert point["count"] == 0
            continue
        assert (point["count"], point["sketched_count"]) == (exp["count"], exp["sketched_count"])
        assert point["max_us"] == exp["max_us"]
        assert point["mean_us"] == (pytest.approx(exp["sum_us"] / exp["count"], rel=1e-9) if exp["count"] else None)
        assert (point["p50_us"], point["p95_us"], point["p99_us"]) == (exp["p50_us"], exp["p95_us"], exp["p99_us"])


def test_without_retention_every_tier_is_there(tmp_path):
    """No retention has run: an old range keeps its asked step (the cutoffs are the ones applied, not guessed from the clock)."""
    settings = load_settings({"data_dir": str(tmp_path), **SETTINGS}, environ={})
    publish_batch(settings.views_dir, HEALTH_MESSAGES, HORIZON)
    client = create_app(settings, clock=lambda: NOW).test_client()
    frm, to = NOW - 30 * DAY, NOW - 29 * DAY
    answer = get(client, "/api/v1/services/api/series", **{"from": frm, "to": to, "step": "5m"})
    assert (answer["step"], answer["tier"]) == ("5m", "window")
    assert_series(answer, expected_series(HEALTH_MESSAGES, "api", frm, to, 300))


def test_tier_span_rounds_only_the_ends_below_a_cutoff():
    cutoffs = TierCutoffs(window=WINDOW_CUT, hour=HOUR_CUT, day=0)
    assert queries.tier_span(WINDOW_CUT, NOW, cutoffs) == queries.TierSpan("window", WINDOW_CUT, NOW, 0)
    assert queries.tier_span(WINDOW_CUT - 1, NOW, cutoffs) == queries.TierSpan("hour", WINDOW_CUT - HOUR, NOW, HOUR)
    assert queries.tier_span(HOUR_CUT, HOUR_CUT + 61, cutoffs) == queries.TierSpan("hour", HOUR_CUT, HOUR_CUT + HOUR, HOUR)
    assert queries.tier_span(HOUR_CUT - 1, HOUR_CUT - 61, cutoffs) == queries.TierSpan("day", HOUR_CUT - DAY, HOUR_CUT, DAY)
    assert queries.tier_span(HOUR_CUT - 1, WINDOW_CUT - 61, cutoffs) == queries.TierSpan("day", HOUR_CUT - DAY, WINDOW_CUT, DAY)
    assert queries.tier_span(0, NOW, TierCutoffs()) == queries.TierSpan("window", 0, NOW, 0)
