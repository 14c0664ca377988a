"""The speed layer's exactly-once upsert (no Spark needed: it takes an Arrow table)."""

from __future__ import annotations

import duckdb
import pyarrow as pa

from healthmon.config import load_settings
from healthmon.views import BATCH_VIEW, HEALTH, HEALTH_AGG_COLUMNS, REALTIME_VIEW, update_view
from speed_jobs.stream import apply_micro_batch, checkpoint_dir, has_committed, reset_realtime_stream


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


def test_a_query_without_committed_batches_rebuilds_its_rows_instead_of_counting_twice(tmp_path):
    settings = load_settings({"data_dir": str(tmp_path)}, environ={})
    checkpoint = checkpoint_dir(settings, "health")
    micro_batches = [[(HEALTH, window_rows([("a", 3600, 2, 10.0)]))], [(HEALTH, window_rows([("a", 3660, 1, 4.0)]))]]
    for batch_id, tables in enumerate(micro_batches):
        apply_micro_batch(settings, tables, batch_id)
    apply_micro_batch(settings, [(HEALTH, window_rows([]))], 5, stream="disk_latency")  # the other stream's progress
    assert realtime(settings) == {("a", 3600): (2, 20.0), ("a", 3660): (1, 4.0)}
    (checkpoint / "commits").mkdir(parents=True)
    (checkpoint / "commits" / ".0.crc").write_text("")  # a hidden file is not a commit
    assert not has_committed(checkpoint)
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
    (checkpoint / "commits" / "0").write_text("v1\n{}")
    assert has_committed(checkpoint)
