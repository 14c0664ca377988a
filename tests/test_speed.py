"""The speed layer's exactly-once upsert (no Spark needed: it takes an Arrow table) and the hours its streams read."""

from __future__ import annotations

import duckdb
import pyarrow as pa

from healthmon.config import load_settings
from healthmon.landing import LocalLandingStore
from healthmon.views import BATCH_VIEW, HEALTH, HEALTH_AGG_COLUMNS, REALTIME_VIEW, update_view
from speed_jobs.stream import (
    HOURS_AHEAD,
    MAX_SOURCE_HOURS,
    apply_micro_batch,
    checkpoint_dir,
    has_started,
    needs_restart,
    reset_realtime_stream,
    source_hours,
    source_path,
)


def window_rows(rows: list[tuple[str, int, int, float]]) -> pa.Table:
    """Arrow windows: (service, window_start, count, value) with every aggregate = value."""
    columns = {"service": [r[0] for r in rows], "window_start": [r[1] for r in rows], "count": [r[2] for r in rows]}
    for name, _kind in HEALTH_AGG_COLUMNS[1:]:
        columns[name] = [r[3] * (r[2] if name.endswith("_sum") else 1) for r in rows]
    return pa.table(columns)


def realtime(settings) -> dict:
    con = duckdb.connect(str(settings.views_dir / REALTIME_VIEW), read_only=True)
    try:
        rows = con.execute("SELECT service, window_start, count, cpu_pct_sum FROM health_window").fetchall()
        return {(s, w): (c, x) for s, w, c, x in rows}
    finally:
        con.close()


def test_micro_batches_merge_and_a_replayed_batch_counts_once(tmp_path):
    settings = load_settings({"data_dir": str(tmp_path)}, environ={})
    first = window_rows([("a", 3600, 2, 10.0), ("b", 3600, 1, 5.0)])
    assert not apply_micro_batch(settings, [(HEALTH, first)], 0)["skipped"]
    assert apply_micro_batch(settings, [(HEALTH, first)], 0)["skipped"]  # Spark replays batch 0 after a crash
    second = window_rows([("a", 3600, 3, 20.0), ("a", 3660, 1, 1.0)])
    apply_micro_batch(settings, [(HEALTH, second)], 1)
    assert realtime(settings) == {("a", 3600): (5, 80.0), ("b", 3600): (1, 5.0), ("a", 3660): (1, 1.0)}


def test_rows_below_the_horizon_are_dropped_and_expired(tmp_path):
    settings = load_settings({"data_dir": str(tmp_path)}, environ={})
    apply_micro_batch(settings, [(HEALTH, window_rows([("a", 0, 1, 1.0), ("a", 3600, 1, 1.0)]))], 0)
    update_view(settings.views_dir / BATCH_VIEW, lambda con: con.execute("INSERT INTO view_meta VALUES (3600, 0, 60, 'x', 0, 0)"))
    apply_micro_batch(settings, [(HEALTH, window_rows([("a", 60, 1, 1.0), ("a", 3660, 1, 1.0)]))], 1)
    assert realtime(settings) == {("a", 3600): (1, 1.0), ("a", 3660): (1, 1.0)}


def test_a_query_that_never_planned_a_batch_rebuilds_its_rows_instead_of_counting_twice(tmp_path):
    settings = load_settings({"data_dir": str(tmp_path)}, environ={})
    checkpoint = checkpoint_dir(settings, "health")
    micro_batches = [[(HEALTH, window_rows([("a", 3600, 2, 10.0)]))], [(HEALTH, window_rows([("a", 3660, 1, 4.0)]))]]
    for batch_id, tables in enumerate(micro_batches):
        apply_micro_batch(settings, tables, batch_id)
    apply_micro_batch(settings, [(HEALTH, window_rows([]))], 5, stream="disk_latency")  # the other stream's progress
    assert realtime(settings) == {("a", 3600): (2, 20.0), ("a", 3660): (1, 4.0)}
    for log in ("offsets", "commits"):
        (checkpoint / log).mkdir(parents=True)
        (checkpoint / log / ".0.crc").write_text("")  # a hidden file is not a micro-batch
    assert not has_started(checkpoint)
    # The checkpoint is gone: the new query replays every raw file with ids from 0. Without the reset, batches
    # 0 and 1 would be skipped as already committed, and the rows counted before would stay.
    assert reset_realtime_stream(settings, "health", [HEALTH]) == 2
    assert realtime(settings) == {}
    for batch_id, tables in enumerate(micro_batches):
        assert not apply_micro_batch(settings, tables, batch_id)["skipped"]
    assert realtime(settings) == {("a", 3600): (2, 20.0), ("a", 3660): (1, 4.0)}
    con = duckdb.connect(str(settings.views_dir / REALTIME_VIEW), read_only=True)
    try:
        assert dict(con.execute("SELECT stream, batch_id FROM speed_progress").fetchall()) == {"health": 1, "disk_latency": 5}
    finally:
        con.close()
    # Batch 0 planned, not committed (a restart cut it short): it is replayed with its id, so the rows stay.
    (checkpoint / "offsets" / "0").write_text("v1\n{}")
    assert has_started(checkpoint)


H = 3600
DAY0 = 1_795_392_000  # 2026-11-23T00:00:00Z


def test_streams_read_the_hours_from_the_horizon_to_the_newest_a_message_may_have():
    horizon, now, skew = DAY0 + 17 * H, DAY0 + 18 * H + 1200, 3600.0
    hours = source_hours(horizon, now, skew)
    # 17:00 (the horizon's hour) to 19:00 (now + the skew) and HOURS_AHEAD more
    assert hours == tuple(range(DAY0 + 17 * H, DAY0 + (19 + HOURS_AHEAD) * H + 1, H))
    assert source_hours(horizon, now, 0.0)[-1] == DAY0 + (18 + HOURS_AHEAD) * H
    assert source_hours(0, now, skew) is None  # no batch view yet: every hour
    assert source_hours(now - MAX_SOURCE_HOURS * H, now, skew) is None  # too many hours for a list


def test_a_stream_starts_again_for_a_new_hour_and_not_for_every_horizon_move():
    reading = tuple(range(DAY0 + 17 * H, DAY0 + 21 * H, H))
    assert not needs_restart(reading, reading)
    assert not needs_restart(reading, reading[1:])  # the horizon moved on: the hour left behind is dropped later
    assert needs_restart(reading, reading[1:] + (DAY0 + 21 * H,))  # a new hour at the top
    assert needs_restart(reading, (DAY0 + 16 * H,) + reading)  # the horizon went back (the batch view was removed)
    assert needs_restart(None, reading) and needs_restart(reading, None) and not needs_restart(None, None)


def test_the_source_path_is_a_glob_of_the_hour_directories(tmp_path):
    store = LocalLandingStore(tmp_path.as_uri())
    assert source_path(store, "health", None) == f"{tmp_path.as_uri()}/raw/type=health"
    assert source_path(store, "health", (DAY0 - H, DAY0)) == (
        f"{tmp_path.as_uri()}/raw/type=health/{{date=2026-11-22/hour=23,date=2026-11-23/hour=00}}")
