"""The speed layer's exactly-once upsert and its replay rule (no Spark needed: they take Arrow tables)."""

from __future__ import annotations

import duckdb
import pyarrow as pa

from healthmon.config import load_settings
from healthmon.views import BATCH_VIEW, DISK_LATENCY, DISK_LATENCY_BUCKET, HEALTH, HEALTH_AGG_COLUMNS, REALTIME_VIEW, update_view
from speed_jobs.stream import STREAM, apply_micro_batch, checkpoint_dir, has_committed, reset_realtime_view


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


def disk_rows(rows: list[tuple[str, int, int, int]]) -> tuple[pa.Table, pa.Table]:
    """Arrow (disk_latency windows, sketch buckets) of (host, window_start, messages, I/Os), all in bucket 7."""
    windows = {"host": [r[0] for r in rows], "device": ["vda"] * len(rows), "op": ["read"] * len(rows),
               "window_start": [r[1] for r in rows], "messages": [r[2] for r in rows], "count": [r[3] for r in rows],
               "sum_us": [100.0 * r[3] for r in rows], "max_us": [900.0] * len(rows), "sketched_count": [r[3] for r in rows],
               "source": ["bcc"] * len(rows), "last_ts": [float(r[1] + 59) for r in rows]}
    buckets = {"host": windows["host"], "device": windows["device"], "op": windows["op"], "window_start": windows["window_start"],
               "bucket": [7] * len(rows), "count": windows["count"]}
    return pa.table({c: windows[c] for c in DISK_LATENCY.columns}), pa.table({c: buckets[c] for c in DISK_LATENCY_BUCKET.columns})


def view_totals(settings) -> tuple:
    con = duckdb.connect(str(settings.views_dir / REALTIME_VIEW), read_only=True)
    try:
        return (con.execute("SELECT sum(count), sum(cpu_pct_sum) FROM health_window").fetchone()
                + con.execute("SELECT sum(messages), sum(count) FROM disk_latency_window").fetchone()
                + con.execute("SELECT sum(count) FROM disk_latency_bucket_window").fetchone()
                + (con.execute("SELECT list(stream ORDER BY stream) FROM speed_progress").fetchone()[0],))
    finally:
        con.close()


def test_one_micro_batch_upserts_both_types_and_counts_their_messages(tmp_path):
    settings = load_settings({"data_dir": str(tmp_path)}, environ={})
    windows, buckets = disk_rows([("h1", 3600, 2, 40), ("h2", 3600, 1, 5)])
    health = window_rows([("a", 3600, 3, 10.0)])
    result = apply_micro_batch(settings, [(HEALTH, health), (DISK_LATENCY, windows), (DISK_LATENCY_BUCKET, buckets)], 0)
    # Messages: 3 health + 3 disk_latency intervals; the 45 I/Os of the buckets are not messages.
    assert (result["input_rows"], result["input_rows_by_type"]) == (6, {"health": 3, "disk_latency": 3})
    assert view_totals(settings) == (3, 30.0, 3, 45, 45, [STREAM])
    assert apply_micro_batch(settings, [(HEALTH, health), (DISK_LATENCY, windows), (DISK_LATENCY_BUCKET, buckets)], 0)["skipped"]
    assert view_totals(settings) == (3, 30.0, 3, 45, 45, [STREAM])


def test_a_query_without_committed_batches_rebuilds_the_view_instead_of_counting_twice(tmp_path):
    settings = load_settings({"data_dir": str(tmp_path)}, environ={})
    checkpoint = checkpoint_dir(settings)
    assert not has_committed(checkpoint)
    windows, buckets = disk_rows([("h1", 3600, 2, 40)])
    micro_batches = [[(HEALTH, window_rows([("a", 3600, 2, 10.0)])), (DISK_LATENCY, windows), (DISK_LATENCY_BUCKET, buckets)],
                     [(HEALTH, window_rows([("a", 3660, 1, 4.0)]))]]
    # Rows counted by an earlier query: the former per-type stream "health", then this stream.
    apply_micro_batch(settings, micro_batches[0][:1], 7, stream="health")
    for batch_id, tables in enumerate(micro_batches):
        apply_micro_batch(settings, tables, batch_id)
    assert view_totals(settings) == (5, 44.0, 2, 40, 40, ["health", STREAM])
    (checkpoint / "commits").mkdir(parents=True)
    (checkpoint / "commits" / ".0.crc").write_text("")  # a hidden file is not a commit
    assert not has_committed(checkpoint)
    # The checkpoint is gone: the new query replays every raw file from batch 0. Without the reset,
    # batches 0 and 1 would be skipped as already committed, and the old "health" rows would stay counted.
    assert reset_realtime_view(settings) == 4
    assert view_totals(settings) == (None, None, None, None, None, None)
    for batch_id, tables in enumerate(micro_batches):
        assert not apply_micro_batch(settings, tables, batch_id)["skipped"]
    assert view_totals(settings) == (3, 24.0, 2, 40, 40, [STREAM])
    (checkpoint / "commits" / "0").write_text("v1\n{}")
    assert has_committed(checkpoint)
