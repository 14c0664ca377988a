"""The batch build: raw -> master (Parquet) -> batch view (DuckDB), incrementally.

One build:

1. ``horizon`` = start of the hour holding ``now - batch_lateness_s`` (never
   moves back).  Hours below it are *closed*: the batch view covers them.
2. Every closed raw hour whose input files (names and sizes) differ from the
   ones recorded in ``view_inputs`` at the last build is rebuilt; unchanged
   hours are not touched.  A late message lands in its old hour, changes that
   hour's files and so gets it rebuilt.
3. A rebuilt hour is compacted into ``master/`` (Parquet, one directory per
   hour, overwritten as a whole: idempotent) and its windows are recomputed
   from master with the same transforms the speed job uses.
4. Hour and day rollups of the touched hours/days are recomputed, ``view_meta``
   gets the new horizon, and the new view file is published atomically
   (``healthmon.views.update_view``).  A build that fails publishes nothing.

Row order of the window tables (:func:`cluster_windows`): DuckDB skips a row
group (122,880 rows) only by the min/max of its columns, so rows appended
hour after hour put every service in every row group, and a series of one
service over days decompresses the whole table.  Rows are therefore kept
ordered by (block of ``CLUSTER_BLOCK_S``, keys, ``window_start``): a time
range still skips whole blocks, and one service's rows of a block lie
together.  New rows are inserted in that order, after the rows already
there; when the horizon enters a new block (every 6 h) the window tables are
rewritten in it, which also drops the rows that retention or a rebuilt hour
deleted: DuckDB never reclaims the deleted rows of a table with an index.

A changed hour that retention has made final is left alone: its raw files may
be pruned, or its day's hour rollups deleted, so recomputing it would wipe
rollups instead of adding the late messages (``batch_jobs.retention.rebuildable``).

The writer lock on the batch view also guarantees that two builds never run
at once, whoever starts them.
"""

from __future__ import annotations

import hashlib
import logging
import signal
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field

import duckdb
from tqdm import tqdm

from batch_jobs.retention import raw_floor, read_tier_cutoffs, rebuildable
from batch_jobs.transforms import VIEW_TRANSFORMS, dedupe_messages, with_hour_partition
from healthmon.config import Settings
from healthmon.landing import (
    HOUR_S,
    LandedFile,
    LandingStore,
    hour_of_partition,
    landing_for,
    master_dir,
    master_hour_dir,
    raw_dir,
)
from healthmon.schema import spark_schema
from healthmon.state import append_run
from healthmon.views import BATCH_VIEW, GRAINS, REALTIME_VIEW, AggTable, expire_below, read_horizon, update_view

log = logging.getLogger(__name__)

DAY_S = 86400
CLUSTER_BLOCK_S = 6 * HOUR_S
"""Window rows are stored ordered by this block of time first, then by key (``cluster_windows``)."""


@dataclass
class HourInput:
    """The raw files of one closed hour of one message type."""

    msg_type: str
    hour_start: int
    files: list[LandedFile] = field(default_factory=list)

    @property
    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for f in sorted(self.files, key=lambda f: f.path):
            digest.update(f"{f.path}\0{f.size}\n".encode())
        return digest.hexdigest()

    @property
    def bytes(self) -> int:
        return sum(f.size for f in self.files)


def closed_horizon(now: float, lateness_s: float) -> int:
    """Start of the first hour that is not closed yet at ``now``."""
    return int((now - lateness_s) // HOUR_S) * HOUR_S


def raw_hours(store: LandingStore, msg_type: str) -> dict[int, HourInput]:
    """Landed raw files grouped by hour."""
    hours: dict[int, HourInput] = {}
    hour_of_dir: dict[str, int] = {}  # an hour holds thousands of files: parse each directory's name once
    for f in store.list_files(raw_dir(msg_type)):
        directory = f.path.rsplit("/", 1)[0]
        if directory not in hour_of_dir:
            hour_of_dir[directory] = hour_of_partition(directory)
        hour = hour_of_dir[directory]
        hours.setdefault(hour, HourInput(msg_type, hour)).files.append(f)
    return hours


def plan_hours(hours: dict[int, HourInput], built: dict[int, str], horizon: int) -> list[HourInput]:
    """Closed hours whose inputs changed since they were last built, oldest first."""
    return [h for start, h in sorted(hours.items()) if start < horizon and built.get(start) != h.fingerprint]


def chunked(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _hour_list_sql(hours: list[int]) -> str:
    return ", ".join(str(int(h)) for h in hours)


def window_order(spec: AggTable) -> str:
    """ORDER BY list of the stored row order of ``spec``'s window table: time block, keys, window_start."""
    return ", ".join([f"window_start // {CLUSTER_BLOCK_S}", *spec.key_names])


def cluster_windows(con, spec: AggTable) -> None:
    """Rewrite ``spec``'s window table in :func:`window_order`, primary key included.

    The sorted rows wait in a temporary table while the old table is dropped
    and checkpointed, so that the new table reuses its blocks: the file does
    not grow by a copy of the table.
    """
    table, columns = spec.table(), ", ".join(spec.columns)
    con.execute("SET enable_progress_bar = false")  # a rewrite takes seconds: no DuckDB bar in the build's output
    con.execute(f"CREATE OR REPLACE TEMP TABLE clustering AS SELECT {columns} FROM {table} ORDER BY {window_order(spec)}")
    con.execute(f"DROP TABLE {table}")
    con.execute("CHECKPOINT")
    con.execute(spec.ddl()[GRAINS.index("window")])
    con.execute(f"INSERT INTO {table} ({columns}) SELECT {columns} FROM clustering")  # insertion order is kept
    con.execute("DROP TABLE clustering")


def rebuild_hours(spark, store: LandingStore, con, chunk: list[HourInput], window_s: int) -> int:
    """Compact ``chunk``'s raw hours (one message type) into master and replace their view rows in ``con``; rows written."""
    msg_type = chunk[0].msg_type
    # The hours' directories, not their files: Spark globs and lists thousands of explicit paths one by one
    # in a listing job (seconds), a few directories at once.  A file landed since raw_hours() is read too; it changes the
    # hour's fingerprint, so the next build rebuilds the hour again, from all its files.
    paths = sorted({store.uri(f.path.rsplit("/", 1)[0]) for h in chunk for f in h.files})
    # FAILFAST: raw lines come only from the collector, so a malformed one is damage to report, not to skip.
    raw = dedupe_messages(spark.read.schema(spark_schema(msg_type)).option("mode", "FAILFAST").json(paths))
    (
        with_hour_partition(raw)
        .write.mode("overwrite")
        .partitionBy("date", "hour")
        .parquet(store.uri(master_dir(msg_type)))
    )
    master = spark.read.parquet(*[store.uri(master_hour_dir(msg_type, h.hour_start)) for h in chunk])
    transforms = VIEW_TRANSFORMS[msg_type]
    if len(transforms) > 1:  # read master once for several transforms; for one, caching costs more than it saves
        master = master.persist()
    hour_list = _hour_list_sql([h.hour_start for h in chunk])
    rows = 0
    try:
        for spec, transform in transforms:
            table = transform(master, window_s).toArrow()
            con.execute(f"DELETE FROM {spec.table()} WHERE window_start // {HOUR_S} * {HOUR_S} IN ({hour_list})")
            con.register("new_rows", table)
            columns = ", ".join(spec.columns)
            con.execute(f"INSERT INTO {spec.table()} ({columns}) SELECT {columns} FROM new_rows ORDER BY {window_order(spec)}")
            con.unregister("new_rows")
            rows += table.num_rows
    finally:
        master.unpersist()
    for h in chunk:
        con.execute(
            "INSERT OR REPLACE INTO view_inputs VALUES (?, ?, ?, ?, ?)",
            [h.msg_type, h.hour_start, h.fingerprint, len(h.files), h.bytes],
        )
    return rows


def refresh_rollups(con, spec: AggTable, hours: list[int]) -> None:
    """Recompute ``spec``'s hour rollups of ``hours`` and day rollups of their days from its windows."""
    if not hours:
        return
    days = sorted({h // DAY_S * DAY_S for h in hours})
    keys = ", ".join(spec.key_names[:-1])
    for grain, unit, source, starts in (("hour", HOUR_S, "window", hours), ("day", DAY_S, "hour", days)):
        target, origin, listed = spec.table(grain), spec.table(source), _hour_list_sql(starts)
        con.execute(f"DELETE FROM {target} WHERE window_start IN ({listed})")
        con.execute(
            f"INSERT INTO {target} SELECT {keys}, window_start // {unit} * {unit} AS window_start, {spec.merge_select()} "
            f"FROM {origin} WHERE window_start // {unit} * {unit} IN ({listed}) GROUP BY ALL"
        )


@dataclass
class BuildPlan:
    """What one build will do, read from a view: the horizons and the hours to rebuild per message type."""

    previous_horizon: int
    horizon: int
    todo_by_type: dict[str, list[HourInput]]
    hours_too_old: int

    @property
    def todo(self) -> list[HourInput]:
        return [h for hours in self.todo_by_type.values() for h in hours]

    @property
    def clustered(self) -> bool:
        return self.horizon // CLUSTER_BLOCK_S != self.previous_horizon // CLUSTER_BLOCK_S

    @property
    def changes_nothing(self) -> bool:
        return not self.todo and self.horizon == self.previous_horizon


def raw_listing(store: LandingStore) -> dict[str, dict[int, HourInput]]:
    """Every viewed message type's landed raw files by hour (:func:`raw_hours`)."""
    return {msg_type: raw_hours(store, msg_type) for msg_type in VIEW_TRANSFORMS}


def plan_build(con, settings: Settings, listing: dict[str, dict[int, HourInput]], now: float) -> BuildPlan:
    """The plan of a build at ``now`` against the view open on ``con``, of the raw files in ``listing`` (:func:`raw_listing`)."""
    previous = read_horizon(con)
    horizon = max(previous, closed_horizon(now, settings.batch_lateness_s))
    tiers, oldest_raw = read_tier_cutoffs(con), raw_floor(settings, now)
    todo_by_type = {}
    too_old = 0
    for msg_type in VIEW_TRANSFORMS:
        built = dict(con.execute("SELECT hour_start, fingerprint FROM view_inputs WHERE msg_type = ?", [msg_type]).fetchall())
        changed = plan_hours(listing[msg_type], built, horizon)
        todo_by_type[msg_type] = [h for h in changed if rebuildable(h.hour_start, h.hour_start in built, tiers, oldest_raw)]
        too_old += len(changed) - len(todo_by_type[msg_type])
    return BuildPlan(previous, horizon, todo_by_type, too_old)


def _outcome(build_id: str, plan: BuildPlan, rows: int, published: bool) -> dict:
    todo = plan.todo
    return {
        "build_id": build_id,
        "published": published,
        "horizon": plan.horizon,
        "previous_horizon": plan.previous_horizon,
        "hours_rebuilt": len(todo),
        "hours_too_old_to_rebuild": plan.hours_too_old,
        "rows_written": rows,
        "clustered": published and plan.clustered,
        "input_files": sum(len(h.files) for h in todo),
        "input_bytes": sum(h.bytes for h in todo),
    }


def build(spark, settings: Settings, store: LandingStore, now: float | None = None, progress: bool = False) -> dict:
    """One incremental build, published atomically; returns what it did.

    A build that would change nothing (no hour to rebuild, the horizon where it
    was) publishes nothing (``"published": False``): the API keeps the answers
    it cached from the view file, which a new file would invalidate every
    ``batch_interval_s``.
    """
    now = time.time() if now is None else now
    build_id = uuid.uuid4().hex[:12]
    view_path = settings.views_dir / BATCH_VIEW
    # Listed once: a file landed after this is read anyway if its hour is rebuilt, and changes that hour's fingerprint,
    # so the next build rebuilds it again (as for a file landed during the build).
    listing = raw_listing(store)
    if view_path.exists():
        try:
            with duckdb.connect(str(view_path), read_only=True) as con:
                plan = plan_build(con, settings, listing, now)
        except duckdb.CatalogException:  # a view from an older release, without a table: the build adds it
            plan = None
        if plan is not None and plan.changes_nothing:
            return _outcome(build_id, plan, 0, published=False)

    def change(con) -> dict:
        plan = plan_build(con, settings, listing, now)  # again, under the writer lock: the view may have changed since
        rows = 0
        bar = tqdm(total=len(plan.todo), unit="hour", desc="batch build", disable=not progress)
        for msg_type, hours in plan.todo_by_type.items():
            for chunk in chunked(hours, settings.batch_hours_per_job):
                rows += rebuild_hours(spark, store, con, chunk, settings.window_s)
                bar.update(len(chunk))
            for spec, _transform in VIEW_TRANSFORMS[msg_type]:
                refresh_rollups(con, spec, [h.hour_start for h in hours])
        bar.close()
        if plan.clustered:
            for families in VIEW_TRANSFORMS.values():
                for spec, _transform in families:
                    cluster_windows(con, spec)
        con.execute("DELETE FROM view_meta")
        con.execute(
            "INSERT INTO view_meta VALUES (?, ?, ?, ?, ?, ?)",
            [plan.horizon, time.time(), settings.window_s, build_id, len(plan.todo), rows],
        )
        return _outcome(build_id, plan, rows, published=True)

    return update_view(view_path, change)


def build_and_record(spark, settings: Settings, store: LandingStore, progress: bool = False) -> dict:
    """Build, expire real-time rows the batch view now covers, and record the outcome."""
    started = time.time()
    record: dict = {"started_at": started}
    try:
        result = build(spark, settings, store, now=started, progress=progress)
        record.update(result)
        record["expired_realtime_rows"] = expire_below(settings.views_dir / REALTIME_VIEW, result["horizon"])
        record["status"] = "ok"
    except Exception as exc:  # the outcome, good or bad, is recorded for the API
        record.update(status="error", error=f"{type(exc).__name__}: {exc}")
        log.error("batch build failed: %s", traceback.format_exc())
    record["duration_s"] = round(time.time() - started, 3)
    append_run(settings.state_dir, record)
    return record


def run(settings: Settings) -> int:
    """``healthmon batch``: one build now, with a progress bar; SIGTERM/SIGINT cancel it (0 then, as for a stop).

    The build runs in a helper thread while this one waits for it or for a
    stop signal: a stop stops Spark, so the build's next Spark call fails and it
    publishes nothing (the previous view stays served, the next build does the
    work), as a stop of the scheduler does; it takes seconds, not the build's minutes.
    """
    from healthmon.spark import StartAborted, spark_session, stop_aborts_start

    stop = threading.Event()
    try:
        with stop_aborts_start(stop):
            spark = spark_session(settings, "healthmon-batch")
    except StartAborted:
        print("batch: stopped while Spark was starting; nothing built")
        return 0
    outcome: dict = {}
    worker = threading.Thread(target=lambda: outcome.update(record=build_and_record(spark, settings, landing_for(settings),
                                                                                    progress=True)), name="batch-build")
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        worker.start()
        while worker.is_alive() and not stop.wait(0.2):
            pass
    finally:
        spark.stop()  # mid-build (a stop signal): the build fails at its next Spark call and publishes nothing
        worker.join()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    record = outcome.get("record")
    if stop.is_set() and (record is None or record["status"] != "ok"):
        print("batch: stopped; the build was cancelled and published nothing (the previous view stays served)")
        return 0
    if record is None or record["status"] != "ok":
        print(f"batch build failed: {record['error'] if record else 'no record'}")
        return 1
    horizon = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record["horizon"]))
    print(
        f"batch build {record['build_id']}: horizon {horizon}, {record['hours_rebuilt']} hours rebuilt, "
        f"{record['rows_written']} window rows, {record['duration_s']} s"
        + ("" if record["published"] else " (nothing changed: the view was not published again)")
    )
    return 0
