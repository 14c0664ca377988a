"""The speed layer: Spark Structured Streaming over landed raw files -> real-time view.

One streaming query per message type (``health``, ``disk_latency``), each over
``raw/type=<type>/``.  The file source picks up each published segment once
(hidden files are skipped, so it never reads a partial one).
``foreachBatch`` applies the same transforms as the batch build
(``batch_jobs.transforms.VIEW_TRANSFORMS``) and upserts the partial aggregates
into ``realtime.duckdb`` for windows at or above the batch horizon.

Exactly once: each query's micro-batch id is committed in ``speed_progress``
(one row per stream) inside the same atomically published view file as the
aggregates, so a micro-batch that Spark replays after a crash is recognised
and skipped.  Each micro-batch also drops rows below the current horizon (the
batch view covers them).
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
from healthmon.views import AGG_TABLES, BATCH_VIEW, REALTIME_VIEW, AggTable, read_view_horizon, update_view

log = logging.getLogger(__name__)

MAX_RESTART_DELAY_S = 30.0


def apply_micro_batch(settings: Settings, tables: list[tuple[AggTable, object]], batch_id: int, stream: str = "health") -> dict:
    """Upsert one micro-batch's aggregates (an Arrow table per view table family) into the real-time view, once."""
    first_spec, first = tables[0]
    input_rows = pc.sum(first[first_spec.message_count]).as_py() or 0
    max_event_ts = pc.max(first["last_ts"]).as_py()

    def change(con) -> dict:
        row = con.execute("SELECT batch_id FROM speed_progress WHERE stream = ?", [stream]).fetchone()
        if row is not None and batch_id <= row[0]:
            return {"batch_id": batch_id, "skipped": True, "input_rows": input_rows}
        horizon = read_view_horizon(settings.views_dir / BATCH_VIEW)
        for spec in AGG_TABLES:
            con.execute(f"DELETE FROM {spec.table()} WHERE window_start < ?", [horizon])
        for spec, table in tables:
            con.register("batch_rows", table)
            columns = ", ".join(spec.columns)
            con.execute(f"CREATE OR REPLACE TEMP TABLE incoming AS SELECT {columns} FROM batch_rows WHERE window_start >= {horizon}")
            con.unregister("batch_rows")
            con.execute(spec.upsert_sql(spec.table(), "incoming"))
        con.execute(
            "INSERT OR REPLACE INTO speed_progress VALUES (?, ?, ?, ?, ?, ?)",
            [stream, batch_id, time.time(), input_rows, max_event_ts, horizon],
        )
        return {"batch_id": batch_id, "skipped": False, "input_rows": input_rows, "max_event_ts": max_event_ts}

    return update_view(settings.views_dir / REALTIME_VIEW, change)


_state_lock = threading.Lock()  # the streams' threads share one state file


def make_foreach_batch(settings: Settings, msg_type: str, streams: dict):
    """The ``foreachBatch`` function of one message type: the batch layer's transforms, then the exactly-once upsert.

    One Spark job per view table family and micro-batch (collected as Arrow);
    the input row count and newest event time are read off the result.
    """
    from batch_jobs.transforms import VIEW_TRANSFORMS, complete_lines, required_columns

    stats = streams.setdefault(msg_type, {"micro_batches": 0, "input_rows": 0, "skipped": 0})

    def process(batch_df, batch_id: int) -> None:
        lines = complete_lines(batch_df, required_columns(msg_type))
        tables = [(spec, transform(lines, settings.window_s).toArrow()) for spec, transform in VIEW_TRANSFORMS[msg_type]]
        if tables[0][1].num_rows == 0:
            return
        result = apply_micro_batch(settings, tables, batch_id, msg_type)
        with _state_lock:
            stats["micro_batches"] += 1
            stats["input_rows"] += result["input_rows"]
            stats["skipped"] += int(result["skipped"])
            stats.update(last_batch_id=batch_id, last_commit_at=time.time(), max_event_ts=result.get("max_event_ts"))
            write_state(settings.state_dir, "speed", {"state": "streaming", "streams": streams, **streams.get("health", {})})

    return process


def start_streams(spark, settings: Settings, streams: dict) -> list:
    """Start one streaming query per message type; returns them (the caller awaits or stops them)."""
    from batch_jobs.transforms import VIEW_TRANSFORMS

    store = landing_for(settings)
    queries = []
    for msg_type in VIEW_TRANSFORMS:
        store.makedirs(raw_dir(msg_type))  # the file source needs the directory to exist
        source = (
            spark.readStream.schema(spark_schema(msg_type))
            # No partition inference: the schema must not change when the first date=/hour= directory appears.
            .option("recursiveFileLookup", "true")
            .option("maxFilesPerTrigger", 1000)
            .json(store.uri(raw_dir(msg_type)))
        )
        checkpoint = settings.data_path / "speed" / msg_type / "checkpoint"
        checkpoint.mkdir(parents=True, exist_ok=True)
        queries.append(
            source.writeStream.foreachBatch(make_foreach_batch(settings, msg_type, streams))
            .option("checkpointLocation", str(checkpoint))
            .trigger(processingTime=f"{settings.speed_trigger_s} seconds")
            .queryName(f"healthmon-speed-{msg_type}")
            .start()
        )
    return queries


def run(settings: Settings) -> int:
    """``healthmon speed``: keep the real-time view until SIGTERM/SIGINT.

    When a query stops on an error (the landing store is unreachable, say),
    all are started again from their checkpoints after a backoff: the
    checkpoints and the micro-batch ids committed with the view make the
    restart exact.
    """
    from healthmon.spark import StartAborted, spark_session, stop_aborts_start

    stop = threading.Event()

    def on_signal(signum, _frame):
        log.info("speed job: signal %d, stopping after the current micro-batch", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        with stop_aborts_start(stop):
            spark = spark_session(settings, "healthmon-speed")
    except StartAborted:
        log.info("speed job: stopped while Spark was starting")
        return 0
    streams: dict = {}
    restarts, delay = 0, 1.0
    try:
        while not stop.is_set():
            queries = []
            try:
                queries = start_streams(spark, settings, streams)
            except Exception as exc:  # noqa: BLE001 - the store may be away: wait for it
                for query in queries:
                    query.stop()
                log.warning("speed job: cannot start the streams (%s); retry in %.0f s", exc, delay)
                stop.wait(delay)
                delay = min(delay * 2, MAX_RESTART_DELAY_S)
                continue
            started = time.monotonic()
            with _state_lock:
                write_state(settings.state_dir, "speed", {"state": "streaming", "started_at": time.time(), "restarts": restarts})
            log.info("speed job streaming %s every %ss", ", ".join(q.name for q in queries), settings.speed_trigger_s)
            while not stop.is_set() and all(q.isActive for q in queries):
                stop.wait(0.5)
            errors = [str(q.exception())[:300] for q in queries if not q.isActive and q.exception()]
            for query in queries:
                query.stop()
            if stop.is_set():
                break
            restarts += 1
            if time.monotonic() - started > 60:
                delay = 1.0
            log.error("speed job: a streaming query stopped (%s); restart %d from the checkpoints in %.0f s", errors, restarts, delay)
            with _state_lock:
                write_state(settings.state_dir, "speed", {"state": "restarting", "restarts": restarts, "last_error": "; ".join(errors)})
            stop.wait(delay)
            delay = min(delay * 2, MAX_RESTART_DELAY_S)
    finally:
        spark.stop()
    return 0
