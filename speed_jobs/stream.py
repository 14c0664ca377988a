"""The speed layer: Spark Structured Streaming over landed raw files -> real-time view.

The file source picks up each published segment once (hidden files are
skipped, so it never reads a partial one).  ``foreachBatch`` applies the same
``health_windows`` transform as the batch build and upserts the partial
aggregates into ``realtime.duckdb`` for windows at or above the batch horizon.

Exactly once: the micro-batch id is committed in ``speed_progress`` inside the
same atomically published view file as the aggregates, so a micro-batch that
Spark replays after a crash is recognised and skipped.  Each micro-batch also
drops rows below the current horizon (the batch view covers them).
"""

from __future__ import annotations

import logging
import signal
import threading
import time

import pyarrow.compute as pc

from healthmon.config import Settings
from healthmon.landing import landing_for, raw_dir
from healthmon.schema import spark_schema
from healthmon.state import write_state
from healthmon.views import BATCH_VIEW, HEALTH_COLUMNS, REALTIME_VIEW, read_view_horizon, update_view, upsert_sql

log = logging.getLogger(__name__)

MSG_TYPE = "health"
MAX_RESTART_DELAY_S = 30.0


def apply_micro_batch(settings: Settings, windows, batch_id: int) -> dict:
    """Upsert one micro-batch's window aggregates (an Arrow table) into the real-time view, once."""
    input_rows = pc.sum(windows["count"]).as_py() or 0
    max_event_ts = pc.max(windows["last_ts"]).as_py()

    def change(con) -> dict:
        (last,) = con.execute("SELECT max(batch_id) FROM speed_progress").fetchone()
        if last is not None and batch_id <= last:
            return {"batch_id": batch_id, "skipped": True, "input_rows": input_rows}
        horizon = read_view_horizon(settings.views_dir / BATCH_VIEW)
        con.execute("DELETE FROM health_window WHERE window_start < ?", [horizon])
        con.register("batch_windows", windows)
        con.execute(f"CREATE TEMP TABLE incoming AS SELECT {', '.join(HEALTH_COLUMNS)} FROM batch_windows WHERE window_start >= {horizon}")
        con.unregister("batch_windows")
        con.execute(upsert_sql("health_window", "incoming"))
        con.execute("DELETE FROM speed_progress")
        con.execute(
            "INSERT INTO speed_progress VALUES (?, ?, ?, ?, ?)", [batch_id, time.time(), input_rows, max_event_ts, horizon]
        )
        return {"batch_id": batch_id, "skipped": False, "input_rows": input_rows, "max_event_ts": max_event_ts}

    return update_view(settings.views_dir / REALTIME_VIEW, change)


def make_foreach_batch(settings: Settings):
    """The ``foreachBatch`` function: same transform as batch, then the exactly-once upsert.

    One Spark job per micro-batch (the windows, collected as Arrow); the input
    row count and newest event time are read off the windows, not recounted.
    """
    from batch_jobs.transforms import complete_lines, health_windows

    stats = {"micro_batches": 0, "input_rows": 0, "skipped": 0}

    def process(batch_df, batch_id: int) -> None:
        windows = health_windows(complete_lines(batch_df), settings.window_s).toArrow()
        if windows.num_rows == 0:
            return
        result = apply_micro_batch(settings, windows, batch_id)
        stats["micro_batches"] += 1
        stats["input_rows"] += result["input_rows"]
        stats["skipped"] += int(result["skipped"])
        write_state(
            settings.state_dir,
            "speed",
            {**stats, "state": "streaming", "last_batch_id": batch_id, "last_commit_at": time.time(),
             "max_event_ts": result.get("max_event_ts")},
        )

    return process


def start_stream(spark, settings: Settings):
    """Start the streaming query; returns it (caller awaits or stops it)."""
    store = landing_for(settings)
    source = (
        spark.readStream.schema(spark_schema(MSG_TYPE))
        # No partition inference: the schema must not change when the first date=/hour= directory appears.
        .option("recursiveFileLookup", "true")
        .option("maxFilesPerTrigger", 1000)
        .json(store.uri(raw_dir(MSG_TYPE)))
    )
    checkpoint = settings.data_path / "speed" / "checkpoint"
    checkpoint.mkdir(parents=True, exist_ok=True)
    return (
        source.writeStream.foreachBatch(make_foreach_batch(settings))
        .option("checkpointLocation", str(checkpoint))
        .trigger(processingTime=f"{settings.speed_trigger_s} seconds")
        .queryName("healthmon-speed")
        .start()
    )


def run(settings: Settings) -> int:
    """``healthmon speed``: keep the real-time view until SIGTERM/SIGINT.

    When the query stops on an error (the landing store is unreachable, say),
    it is started again from its checkpoint after a backoff: the checkpoint and
    the micro-batch ids committed with the view make the restart exact.
    """
    from healthmon.spark import spark_session

    stop = threading.Event()

    def on_signal(signum, _frame):
        log.info("speed job: signal %d, stopping after the current micro-batch", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    store = landing_for(settings)
    spark = spark_session(settings, "healthmon-speed")
    restarts, delay = 0, 1.0
    try:
        while not stop.is_set():
            try:
                store.makedirs(raw_dir(MSG_TYPE))  # the file source needs the directory to exist
                query = start_stream(spark, settings)
            except Exception as exc:  # noqa: BLE001 - the store may be away: wait for it
                log.warning("speed job: cannot start the stream (%s); retry in %.0f s", exc, delay)
                stop.wait(delay)
                delay = min(delay * 2, MAX_RESTART_DELAY_S)
                continue
            started = time.monotonic()
            write_state(settings.state_dir, "speed", {"state": "streaming", "started_at": time.time(), "restarts": restarts})
            log.info("speed job streaming %s every %ss", store.uri(raw_dir(MSG_TYPE)), settings.speed_trigger_s)
            while not stop.is_set() and query.isActive:
                stop.wait(0.5)
            if stop.is_set():
                query.stop()
                break
            error = str(query.exception())[:300]
            restarts += 1
            if time.monotonic() - started > 60:
                delay = 1.0
            log.error("speed job: streaming query stopped (%s); restart %d from the checkpoint in %.0f s", error, restarts, delay)
            write_state(settings.state_dir, "speed", {"state": "restarting", "restarts": restarts, "last_error": error})
            stop.wait(delay)
            delay = min(delay * 2, MAX_RESTART_DELAY_S)
    finally:
        spark.stop()
    return 0
