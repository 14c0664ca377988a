"""Retention over a real (local) landing store and real batch view files; the build's guard with real Spark."""

from __future__ import annotations

import dataclasses
import random

import duckdb
import pyarrow as pa
import pytest

from batch_jobs.retention import VIEW_RETENTION, TierCutoffs, apply_retention, read_tier_cutoffs
from healthmon.config import load_settings
from healthmon.landing import landing_for, master_hour_dir, raw_dir, raw_segment_path
from healthmon.schema import landed_line
from healthmon.views import AGG_TABLES, BATCH_VIEW, GRAINS, REALTIME_VIEW, update_view

NOW = 1_790_000_000.0
HOUR = 3600
DAY = 86400


@pytest.mark.parametrize("landing", ["file", pytest.param("hdfs", marks=[pytest.mark.hdfs, pytest.mark.slow])])
def test_deletes_old_built_raw_hours_and_old_master_hours_only(tmp_path, landing, request):
    settings = load_settings({"data_dir": str(tmp_path), "retention_raw_days": 2, "retention_master_days": 10}, environ={})
    if landing == "hdfs":
        cluster, _env = request.getfixturevalue("local_hdfs")
        settings = dataclasses.replace(cluster, data_dir=str(tmp_path), landing=f"{cluster.landing}-retention",
                                       retention_raw_days=2, retention_master_days=10)
    store = landing_for(settings)
    base = int(NOW // HOUR) * HOUR
    old_built, old_unbuilt, recent = base - 3 * DAY, base - 3 * DAY + HOUR, base - DAY
    # Never built, and in a day whose hour rollups are gone (older than retention_hour_days): no build will ever count it.
    never_buildable = base - 200 * DAY
    for hour in (old_built, old_unbuilt, recent, never_buildable):
        store.publish(raw_segment_path("health", hour, f"c1-1-{hour}"), b'{"x": 1}\n')
    old_master, kept_master = base - 11 * DAY, base - 9 * DAY
    for hour in (old_master, kept_master):
        store.publish(f"{master_hour_dir('health', hour)}/part-0.parquet", b"PAR1")

    def built(con):
        con.execute("INSERT INTO view_meta VALUES (?, 0, 60, 'b', 0, 0)", [base])
        con.execute("INSERT INTO view_inputs VALUES ('health', ?, 'f', 1, 1), ('health', ?, 'f', 1, 1)", [old_built, recent])

    update_view(settings.views_dir / BATCH_VIEW, built)
    deleted = apply_retention(settings, store, now=NOW)
    assert deleted.pop("view_rows") == {spec.table(g): 0 for spec in AGG_TABLES for g in GRAINS}
    assert deleted == {"raw_hours": 2, "master_hours": 1, "raw_kept_unbuilt": 1}
    remaining = {f.path for f in store.list_files("")}
    assert remaining == {
        raw_segment_path("health", old_unbuilt, f"c1-1-{old_unbuilt}"),
        raw_segment_path("health", recent, f"c1-1-{recent}"),
        f"{master_hour_dir('health', kept_master)}/part-0.parquet",
    }
    again = apply_retention(settings, store, now=NOW)
    again.pop("view_rows")
    assert again == {"raw_hours": 0, "master_hours": 0, "raw_kept_unbuilt": 1}


# ---------------------------------------------------------------- the batch view's tiers

D0 = 1_789_948_800  # 2026-09-21T00:00:00Z, a day boundary
TIER_NOW = D0 + 13 * HOUR + 1234.5
TIER_SETTINGS = {"retention_window_days": 3, "retention_hour_days": 10, "retention_day_days": 30}
# The cutoffs of those settings at TIER_NOW, worked out by hand: windows an hour boundary, rollups day boundaries.
EXPECTED_CUTOFFS = TierCutoffs(window=D0 - 3 * DAY + 13 * HOUR, hour=D0 - 10 * DAY, day=D0 - 30 * DAY)
_VALUES = {"VARCHAR": "x", "BIGINT": 1, "DOUBLE": 1.0, "INTEGER": 7}


def grain_starts(grain: str, seed: int) -> list[int]:
    """Row starts of one grain over the last 45 days: every 20 min / hour / day, a few left out at random."""
    unit = {"window": 1200, "hour": HOUR, "day": DAY}[grain]
    rng = random.Random(seed)
    first = D0 - 45 * DAY
    return [t for t in range(first, int(TIER_NOW), unit) if rng.random() < 0.9]


def publish_tier_rows(settings, horizon: int) -> dict[str, list[int]]:
    """A batch view with rows of every family and grain (and view_meta with ``horizon``); their starts by table."""
    starts = {spec.table(g): grain_starts(g, i) for i, (spec, g) in enumerate((s, g) for s in AGG_TABLES for g in GRAINS)}

    def change(con):
        for spec in AGG_TABLES:
            for grain in GRAINS:
                table, column_types = spec.table(grain), dict((*spec.keys, *((a, t) for a, t, _ in spec.aggs)))
                ws = starts[table]
                data = {c: [_VALUES[t]] * len(ws) for c, t in column_types.items()}
                data["window_start"] = ws
                con.register("_rows", pa.table(data))
                con.execute(f"INSERT INTO {table} ({', '.join(data)}) SELECT * FROM _rows")
                con.unregister("_rows")
        con.execute("INSERT INTO view_meta VALUES (?, 0, 60, 'b', 0, 0)", [horizon])

    update_view(settings.views_dir / BATCH_VIEW, change, fresh=True)
    return starts


def view_starts(settings) -> dict[str, list[int]]:
    con = duckdb.connect(str(settings.views_dir / BATCH_VIEW), read_only=True)
    try:
        return {
            spec.table(g): [r[0] for r in con.execute(f"SELECT window_start FROM {spec.table(g)} ORDER BY window_start").fetchall()]
            for spec in AGG_TABLES for g in GRAINS
        }
    finally:
        con.close()


def recorded_cutoffs(settings) -> TierCutoffs:
    con = duckdb.connect(str(settings.views_dir / BATCH_VIEW), read_only=True)
    try:
        return read_tier_cutoffs(con)
    finally:
        con.close()


def test_view_retention_deletes_exactly_the_expired_rows_of_each_tier(tmp_path):
    settings = load_settings({"data_dir": str(tmp_path), **TIER_SETTINGS}, environ={})
    horizon = int(TIER_NOW // HOUR) * HOUR - HOUR
    starts = publish_tier_rows(settings, horizon)
    update_view(settings.views_dir / REALTIME_VIEW, lambda con: con.execute("INSERT INTO health_window (service, window_start) "
                                                                            "VALUES ('a', ?)", [D0 - 40 * DAY]))
    deleted = apply_retention(settings, landing_for(settings), now=TIER_NOW)["view_rows"]
    cutoff = {"window": EXPECTED_CUTOFFS.window, "hour": EXPECTED_CUTOFFS.hour, "day": EXPECTED_CUTOFFS.day}
    expected_deleted, expected_kept = {}, {}
    for spec in AGG_TABLES:
        for grain in GRAINS:
            table = spec.table(grain)
            expected_deleted[table] = sum(1 for t in starts[table] if t < cutoff[grain])
            expected_kept[table] = [t for t in starts[table] if t >= cutoff[grain]]
    assert deleted == expected_deleted
    assert all(deleted.values()) and all(expected_kept.values())  # every tier lost rows and kept rows
    assert view_starts(settings) == expected_kept
    assert recorded_cutoffs(settings) == EXPECTED_CUTOFFS
    # The real-time view is not retention's business (the batch build expires it).
    con = duckdb.connect(str(settings.views_dir / REALTIME_VIEW), read_only=True)
    assert con.execute("SELECT count(*) FROM health_window").fetchone()[0] == 1
    con.close()
    # Again at the same time: nothing left to delete.
    assert set(apply_retention(settings, landing_for(settings), now=TIER_NOW)["view_rows"].values()) == {0}


def test_view_retention_never_reaches_the_horizon_and_never_moves_back(tmp_path):
    settings = load_settings({"data_dir": str(tmp_path), **TIER_SETTINGS}, environ={})
    # A batch view whose horizon is 20 days old (no build since): nothing at or above its hour/day is deleted.
    old_horizon = D0 - 20 * DAY + 5 * HOUR
    starts = publish_tier_rows(settings, old_horizon)
    apply_retention(settings, landing_for(settings), now=TIER_NOW)
    clamped = TierCutoffs(window=old_horizon, hour=D0 - 20 * DAY, day=EXPECTED_CUTOFFS.day)
    assert recorded_cutoffs(settings) == clamped
    kept = view_starts(settings)
    for spec in AGG_TABLES:
        for grain in GRAINS:
            table = spec.table(grain)
            assert kept[table] == [t for t in starts[table] if t >= getattr(clamped, grain)]
    # Longer retention later (or a clock that went back): the recorded cutoffs stay, what is gone is gone.
    longer = dataclasses.replace(settings, retention_window_days=20, retention_hour_days=25, retention_day_days=40)
    apply_retention(longer, landing_for(longer), now=TIER_NOW - 3 * DAY)
    assert recorded_cutoffs(settings) == clamped
    con = duckdb.connect(str(settings.views_dir / BATCH_VIEW), read_only=True)
    assert con.execute(f"SELECT count(*) FROM {VIEW_RETENTION}").fetchone()[0] == len(GRAINS)
    con.close()


# ---------------------------------------------------------------- the batch build never wipes a rollup (real Spark)

GUARD_NOW = float(D0 + 12 * HOUR)
GUARD_SETTINGS = {"retention_raw_days": 3, "retention_window_days": 2, "retention_hour_days": 4, "retention_day_days": 3650,
                  "batch_lateness_s": 300}


def health_lines(hour: int, count: int, seed: int, prefix: str) -> tuple[bytes, list[dict]]:
    rng = random.Random(seed)
    messages = [
        {"type": "health", "service": f"svc{i % 2}", "ts": hour + rng.uniform(0, HOUR - 1), "cpu_pct": rng.uniform(0, 100),
         "ram_total_gb": 32, "ram_free_gb": rng.uniform(0, 32), "disk_total_gb": 100, "disk_free_gb": rng.uniform(0, 100)}
        for i in range(count)
    ]
    return b"".join(landed_line(m, f"{prefix}-{i}", GUARD_NOW) for i, m in enumerate(messages)), messages


def totals_by_start(view, table: str) -> dict[int, tuple[int, float]]:
    con = duckdb.connect(str(view), read_only=True)
    try:
        rows = con.execute(f"SELECT window_start, sum(count), sum(cpu_pct_sum) FROM {table} GROUP BY window_start").fetchall()
    finally:
        con.close()
    return {int(ws): (int(n), total) for ws, n, total in rows}


def expected_by_start(messages: list[dict], unit: int) -> dict[int, tuple[int, float]]:
    out: dict[int, list] = {}
    for m in messages:
        entry = out.setdefault(int(m["ts"] // unit * unit), [0, 0.0])
        entry[0] += 1
        entry[1] += m["cpu_pct"]
    return {k: tuple(v) for k, v in out.items()}


def assert_same_totals(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for start, (count, cpu_sum) in want.items():
        assert got[start][0] == count, start
        assert got[start][1] == pytest.approx(cpu_sum, rel=1e-12), start


def window_keys(messages: list[dict]) -> int:
    """Distinct (service, minute window) of ``messages``: the window rows they make."""
    return len({(m["service"], int(m["ts"] // 60)) for m in messages})


@pytest.mark.slow
@pytest.mark.spark
def test_a_late_build_never_wipes_a_rollup_that_retention_made_final(tmp_path):
    """Late messages for old hours after retention: rebuilt where the result is complete, left alone where it would wipe rollups."""
    from batch_jobs.build import build
    from healthmon.spark import spark_session

    settings = load_settings({"data_dir": str(tmp_path), **GUARD_SETTINGS}, environ={})
    store = landing_for(settings)
    view = settings.views_dir / BATCH_VIEW
    # At GUARD_NOW: windows below D0 - 2 d + 12 h, hour rollups below D0 - 4 d and built raw hours below D0 - 3 d + 12 h are deleted.
    hour_a = D0 - 6 * DAY + 3 * HOUR  # its day is older than retention_hour_days: only its day rollup stays
    hour_d = D0 - 6 * DAY + 7 * HOUR  # the same day; its first messages come after retention
    hour_e = D0 - 3 * DAY + 2 * HOUR  # built, then its raw files pruned and its windows deleted
    hour_b = D0 - 2 * DAY + 5 * HOUR  # windows deleted, raw files still there
    hour_c = D0 - DAY + 4 * HOUR  # recent
    sent: dict[int, list[dict]] = {}
    for k, hour in enumerate((hour_a, hour_e, hour_b, hour_c)):
        data, sent[hour] = health_lines(hour, 40, seed=k, prefix=f"h{k}")
        store.publish(raw_segment_path("health", hour, f"c1-1-{k:06d}"), data)

    spark = spark_session(settings, "healthmon-test-retention")
    try:
        assert build(spark, settings, store, now=GUARD_NOW)["hours_rebuilt"] == 4
        first = apply_retention(settings, store, now=GUARD_NOW)
        assert first["raw_hours"] == 2  # a and e
        assert first["view_rows"]["health_hour"] == 2  # hour a, two services
        assert first["view_rows"]["health_window"] == window_keys(sent[hour_a] + sent[hour_e] + sent[hour_b])
        assert first["view_rows"]["health_day"] == 0

        late: dict[int, list[dict]] = {}
        for k, hour in enumerate((hour_d, hour_e, hour_b)):
            data, late[hour] = health_lines(hour, 10, seed=100 + k, prefix=f"late{k}")
            store.publish(raw_segment_path("health", hour, f"c1-2-{k:06d}"), data)
        second = build(spark, settings, store, now=GUARD_NOW + 60)
    finally:
        spark.stop()
    # b is rebuilt from all its raw files; d (its day has lost its hour rollups) and e (raw files pruned) are left alone.
    assert second["hours_rebuilt"] == 1 and second["hours_too_old_to_rebuild"] == 2
    assert_same_totals(totals_by_start(view, "health_day"),
                       expected_by_start(sent[hour_a] + sent[hour_e] + sent[hour_b] + late[hour_b] + sent[hour_c], DAY))
    assert_same_totals(totals_by_start(view, "health_hour"),
                       expected_by_start(sent[hour_e] + sent[hour_b] + late[hour_b] + sent[hour_c], HOUR))
    assert_same_totals(totals_by_start(view, "health_window"), expected_by_start(sent[hour_b] + late[hour_b] + sent[hour_c], 60))

    # The late raw files no build will count are deleted; b's restored windows expire again.
    again = apply_retention(settings, store, now=GUARD_NOW + 120)
    assert again["raw_hours"] == 2 and again["raw_kept_unbuilt"] == 0  # d (never buildable) and e's late file
    assert again["view_rows"]["health_window"] == window_keys(sent[hour_b] + late[hour_b])
    assert {f.path.rsplit("/", 1)[0] for f in store.list_files(raw_dir("health"))} == {
        raw_segment_path("health", h, "x").rsplit("/", 1)[0] for h in (hour_b, hour_c)
    }
