"""The speed layer: Spark Structured Streaming over landed raw files -> real-time view.

One streaming query per message type (``health``, ``disk_latency``), each over
the hour directories of ``raw/type=<type>/`` from the batch horizon's on
(``source_hours``; the queries start again from their checkpoints when a new
hour must be read).  The file source picks up each published segment once
(hidden files are skipped, so it never reads a partial one).
``foreachBatch`` applies the same transforms as the batch build
(``batch_jobs.transforms.VIEW_TRANSFORMS``) and upserts the partial aggregates
into ``realtime.duckdb`` for windows at or above the batch horizon.

Exactly once: each query's micro-batch id is committed in ``speed_progress``
(one row per stream) inside the same atomically published view file as the
aggregates, so a micro-batch that Spark replays after a crash is recognised
and skipped.  Each micro-batch also drops rows below the current horizon (the
batch view covers them).

``state/speed.json`` keeps, per stream, the timings of the last
``RECENT_BATCHES`` micro-batches: Spark's own phases (``spark_ms``, from a
query listener), the ``foreachBatch`` steps (``foreach_s``: aggregate, then
the view update's lock, copy, change, checkpoint, publish) and the size of
the published view (``bench/freshness.py`` reads them).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path

import pyarrow.compute as pc

from healthmon.config import Settings
from healthmon.landing import HOUR_S, hour_partition, landing_for, raw_dir
from healthmon.schema import spark_schema
from healthmon.state import write_state
from healthmon.views import (
    AGG_TABLES,
    BATCH_VIEW,
    GRAINS,
    REALTIME_VIEW,
    VIEWED_TYPES,
    AggTable,
    delete_rows,
    read_view_horizon,
    update_view,
)

log = logging.getLogger(__name__)

MAX_RESTART_DELAY_S = 30.0
RECENT_BATCHES = 20
"""Micro-batches per stream whose timings ``state/speed.json`` keeps (``recent_batches``, newest last)."""
STREAMING_CONF = {
    # A micro-batch holds 0.5 s of messages: a few hundred (service, window) groups, one reduce task is plenty.
    # Spark keeps the value of a query's first start in its checkpoint (a new checkpoint takes this one).
    "spark.sql.shuffle.partitions": "1",
    # The file source lists a micro-batch's files again in getBatch; above 32 files (a backlog after a pause)
    # Spark runs that listing as a distributed job, which took 2-12 s per micro-batch here instead of ~50 ms.
    "spark.sql.sources.parallelPartitionDiscovery.threshold": "1000000",
}
"""Session settings of the streaming queries, applied before they start."""
SOURCE_CHECK_S = 5.0
"""How often the speed job looks whether its streams must read a new hour directory (see ``source_hours``)."""
HOURS_AHEAD = 1
"""Hour directories a stream reads beyond the newest one a message may land in now, so that a new hour needs no restart first."""
MAX_SOURCE_HOURS = 48
"""Above this many hours from the batch horizon on, a stream reads its whole ``raw/type=<type>/`` tree instead of a list of hours."""
QUIET_LOGGERS = ("org.apache.spark.sql.execution.streaming.sinks.FileStreamSink",)
"""Loggers set to ERROR: on a glob source path FileStreamSink warns, with a stack trace, that the path itself does not exist."""


def apply_micro_batch(settings: Settings, tables: list[tuple[AggTable, object]], batch_id: int, stream: str = "health",
                      timings: dict | None = None) -> dict:
    """Upsert one micro-batch's aggregates (an Arrow table per view table family) into the real-time view, once.

    ``timings``: see ``update_view``.
    """
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

    return update_view(settings.views_dir / REALTIME_VIEW, change, timings=timings)


_state_lock = threading.Lock()  # the streams' threads share one state file


def source_hours(horizon: int, now: float, max_clock_skew_s: float) -> tuple[int, ...] | None:
    """Start of every hour whose raw directory the streams must read at ``now``; None: read every hour.

    Spark's file source lists its whole path at every trigger: over the whole
    ``raw/type=<type>/`` tree that grows by thousands of segments an hour and
    takes seconds within hours of running.  A micro-batch drops the rows below
    the batch ``horizon`` (the batch view has them), and a segment lies in the
    directory of its messages' hour, so only the hours from the horizon's up to
    the newest a message may have now (``max_clock_skew_s`` ahead), plus
    ``HOURS_AHEAD``, are read.  Without a batch view yet, or over more than
    ``MAX_SOURCE_HOURS``, every hour is.
    """
    first = horizon // HOUR_S * HOUR_S
    last = (int(now + max_clock_skew_s) // HOUR_S + HOURS_AHEAD) * HOUR_S
    if horizon <= 0 or (last - first) // HOUR_S + 1 > MAX_SOURCE_HOURS:
        return None
    return tuple(range(first, last + 1, HOUR_S))


def needs_restart(reading: tuple[int, ...] | None, needed: tuple[int, ...] | None) -> bool:
    """Whether streams that read the hours ``reading`` must start again to read ``needed``.

    Only for a new hour at the top, or an hour no longer read at the bottom
    (the horizon went back: a batch view removed); hours left behind by the
    horizon are dropped at the next restart, an hour later at most.
    """
    if reading is None or needed is None:
        return reading != needed
    return needed[-1] > reading[-1] or needed[0] < reading[0]


def hours_to_read(settings: Settings, reading: tuple[int, ...] | None) -> tuple[int, ...] | None:
    """``source_hours`` now; ``reading`` if the batch view cannot be read."""
    try:
        horizon = read_view_horizon(settings.views_dir / BATCH_VIEW)
    except Exception as exc:  # noqa: BLE001 - a damaged or foreign file: keep reading what is read
        log.warning("speed job: cannot read the batch horizon (%s); the streams keep their hours", exc)
        return reading
    return source_hours(horizon, time.time(), settings.max_clock_skew_s)


def source_path(store, msg_type: str, hours: tuple[int, ...] | None) -> str:
    """The file source's path: ``raw/type=<type>`` or a glob of its hour directories ``hours`` (missing ones match nothing)."""
    root = store.uri(raw_dir(msg_type))
    return root if hours is None else root + "/{" + ",".join(hour_partition(h) for h in hours) + "}"


def checkpoint_dir(settings: Settings, msg_type: str) -> Path:
    """The checkpoint (offset, commit and file-source logs) of the query of ``msg_type``."""
    return settings.data_path / "speed" / msg_type / "checkpoint"


def has_started(checkpoint: Path) -> bool:
    """Whether the query of ``checkpoint`` has planned a micro-batch (without one it starts from the first raw file, ids from 0).

    A query whose micro-batch was planned (``offsets``) but not committed,
    stopped mid-way (a restart for a new hour, a crash), replays that
    micro-batch with the same files and id: ``speed_progress`` skips it if it
    was published, so its rows must stay.
    """
    return any((checkpoint / log).is_dir() and any(not p.name.startswith(".") for p in (checkpoint / log).iterdir())
               for log in ("offsets", "commits"))


def reset_realtime_stream(settings: Settings, msg_type: str, tables: list[AggTable]) -> int:
    """Discard the real-time rows of ``tables`` and the micro-batch progress of stream ``msg_type``; returns the rows discarded.

    Run before a query starts that has never planned a micro-batch (first start,
    or its checkpoint deleted: ``has_started``): it reads every raw file of its type again, with
    micro-batch ids from 0, so the rows counted before would otherwise count
    twice, and the new micro-batches up to the old committed id would be
    skipped as replays.
    """
    view = settings.views_dir / REALTIME_VIEW
    if not view.exists():
        return 0

    def change(con) -> int:
        delete_rows(con, ["speed_progress"], "stream = ?", [msg_type])
        return delete_rows(con, [spec.table(grain) for spec in tables for grain in GRAINS])

    return update_view(view, change)


def make_foreach_batch(settings: Settings, msg_type: str, streams: dict):
    """The ``foreachBatch`` function of one message type: the batch layer's transforms, then the exactly-once upsert.

    One Spark job per view table family and micro-batch (collected as Arrow);
    the input row count and newest event time are read off the result.
    """
    from batch_jobs.transforms import VIEW_TRANSFORMS, complete_lines, required_columns

    stats = streams.setdefault(msg_type, {"micro_batches": 0, "input_rows": 0, "skipped": 0, "recent_batches": []})

    def process(batch_df, batch_id: int) -> None:
        started = time.time()
        lines = complete_lines(batch_df, required_columns(msg_type))
        tables = [(spec, transform(lines, settings.window_s).toArrow()) for spec, transform in VIEW_TRANSFORMS[msg_type]]
        if tables[0][1].num_rows == 0:
            return
        timings = {"aggregate": time.time() - started}
        result = apply_micro_batch(settings, tables, batch_id, msg_type, timings)
        published = time.time()
        with _state_lock:
            stats["micro_batches"] += 1
            stats["input_rows"] += result["input_rows"]
            stats["skipped"] += int(result["skipped"])
            stats.update(last_batch_id=batch_id, last_commit_at=published, max_event_ts=result.get("max_event_ts"))
            recent = stats["recent_batches"]
            recent.append({"batch_id": batch_id, "input_rows": result["input_rows"], "foreach_started_at": started,
                           "published_at": published, "view_bytes": timings.pop("bytes", None),
                           "foreach_s": {step: round(s, 4) for step, s in timings.items()}})
            del recent[:-RECENT_BATCHES]
            _write_streaming_state(settings, streams)

    return process


def query_name(msg_type: str) -> str:
    return f"healthmon-speed-{msg_type}"


def _write_streaming_state(settings: Settings, streams: dict) -> None:
    write_state(settings.state_dir, "speed", {"state": "streaming", "streams": streams, **streams.get("health", {})})


def progress_listener(settings: Settings, streams: dict):
    """A listener that adds Spark's own timings of each micro-batch (``durationMs`` per phase) to ``recent_batches``."""
    from pyspark.sql.streaming import StreamingQueryListener

    names = {query_name(msg_type): msg_type for msg_type in VIEWED_TYPES}

    class BatchTimings(StreamingQueryListener):
        def onQueryStarted(self, event) -> None:
            pass

        def onQueryIdle(self, event) -> None:
            pass

        def onQueryTerminated(self, event) -> None:
            pass

        def onQueryProgress(self, event) -> None:
            progress = event.progress
            msg_type = names.get(progress.name)
            with _state_lock:
                recent = streams.get(msg_type, {}).get("recent_batches", [])
                for batch in recent:
                    if batch["batch_id"] == progress.batchId:
                        batch["trigger_at"] = progress.timestamp
                        batch["spark_ms"] = dict(progress.durationMs)
                        _write_streaming_state(settings, streams)
                        break

    return BatchTimings()


def start_streams(spark, settings: Settings, streams: dict, hours: tuple[int, ...] | None = None) -> list:
    """Start one streaming query per message type over the raw directories of ``hours`` (None: all); returns them."""
    from batch_jobs.transforms import VIEW_TRANSFORMS

    store = landing_for(settings)
    for name, value in STREAMING_CONF.items():
        spark.conf.set(name, value)
    queries = []
    for msg_type in VIEW_TRANSFORMS:
        store.makedirs(raw_dir(msg_type))  # the file source needs the directory to exist
        source = (
            spark.readStream.schema(spark_schema(msg_type))
            # No partition inference: the schema must not change when the first date=/hour= directory appears.
            .option("recursiveFileLookup", "true")
            .option("maxFilesPerTrigger", 1000)
            .json(source_path(store, msg_type, hours))
        )
        checkpoint = checkpoint_dir(settings, msg_type)
        if not has_started(checkpoint):
            discarded = reset_realtime_stream(settings, msg_type, [spec for spec, _transform in VIEW_TRANSFORMS[msg_type]])
            log.info("speed job: no micro-batch yet in %s: replaying raw/type=%s/ from the start (%d real-time rows discarded)",
                     checkpoint, msg_type, discarded)
        checkpoint.mkdir(parents=True, exist_ok=True)
        queries.append(
            source.writeStream.foreachBatch(make_foreach_batch(settings, msg_type, streams))
            .option("checkpointLocation", str(checkpoint))
            .trigger(processingTime=f"{settings.speed_trigger_s} seconds")
            .queryName(query_name(msg_type))
            .start()
        )
        streams[msg_type]["reading_from_ts"] = None if hours is None else hours[0]  # None: every hour
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
    spark.streams.addListener(progress_listener(settings, streams))
    log4j = spark._jvm.org.apache.logging.log4j
    for name in QUIET_LOGGERS:
        log4j.core.config.Configurator.setLevel(name, log4j.Level.ERROR)
    restarts, delay = 0, 1.0
    try:
        while not stop.is_set():
            queries = []
            hours = hours_to_read(settings, reading=None)
            try:
                queries = start_streams(spark, settings, streams, hours)
            except Exception as exc:  # noqa: BLE001 - the store may be away: wait for it
                for query in queries:
                    query.stop()
                log.warning("speed job: cannot start the streams (%s); retry in %.0f s", exc, delay)
                stop.wait(delay)
                delay = min(delay * 2, MAX_RESTART_DELAY_S)
                continue
            started = time.monotonic()
            with _state_lock:
                write_state(settings.state_dir, "speed", {"state": "streaming", "started_at": time.time(), "restarts": restarts,
                                                          "streams": streams})
            log.info("speed job streaming %s every %ss over %s", ", ".join(q.name for q in queries), settings.speed_trigger_s,
                     "every hour" if hours is None else f"{len(hours)} hours from {hour_partition(hours[0])}")
            moved, next_check = False, time.monotonic() + SOURCE_CHECK_S
            while not stop.is_set() and all(q.isActive for q in queries) and not moved:
                stop.wait(0.5)
                if time.monotonic() >= next_check:
                    next_check = time.monotonic() + SOURCE_CHECK_S
                    moved = needs_restart(hours, hours_to_read(settings, reading=hours))
            errors = [str(q.exception())[:300] for q in queries if not q.isActive and q.exception()]
            for query in queries:
                query.stop()
            if stop.is_set():
                break
            if moved and not errors:
                log.info("speed job: the streams must read another hour: starting them again from their checkpoints")
                continue
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
