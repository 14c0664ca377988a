"""The view store: DuckDB files of mergeable window aggregates.

Two files live in ``<data_dir>/views``:

- ``batch.duckdb``: built by the batch layer; windows ``< horizon``; hour and
  day rollups; ``view_meta`` (one row: horizon, built_at, ...) and
  ``view_inputs`` (the raw files each hour was built from).
- ``realtime.duckdb``: kept by the speed layer; windows ``>= horizon``;
  ``speed_progress`` (the last committed micro-batch).

Readers never see a half-written view and never hit a lock error: a published
file is never opened for writing.  A writer takes an exclusive ``flock`` on
``<file>.lock`` (so batch, speed and scheduler updates are serialized), copies
the published file to a temporary name, changes the copy, checkpoints, closes
and ``os.replace``-s it over the published name.  Readers open files
read-only and reopen when the inode changes (``ViewReader``).

Aggregates are mergeable (count, sum, min, max, last-by-ts), never averages, so
any set of windows combines exactly; the SQL that merges them is here, once.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb

from healthmon.schema import HEALTH_METRICS

BATCH_VIEW = "batch.duckdb"
REALTIME_VIEW = "realtime.duckdb"

log = logging.getLogger("healthmon.views")

GRAINS = ("window", "hour", "day")  # <name>_window (base windows), <name>_hour and <name>_day (batch rollups)
MERGES = ("sum", "min", "max", "last")  # how an aggregate column combines; "last" takes the value at the largest last_ts


@dataclass(frozen=True)
class AggTable:
    """A family of view tables of mergeable aggregates: ``<name>_window``, ``<name>_hour``, ``<name>_day``.

    ``keys`` are the grouping columns besides ``window_start``; each aggregate
    column says how two rows of it merge.  DDL, the merging select-list and
    the real-time upsert are all derived from this, so every layer merges a
    table the same way.
    """

    name: str
    keys: tuple[tuple[str, str], ...]
    aggs: tuple[tuple[str, str, str], ...]  # (column, DuckDB type, merge)
    message_count: str = "count"  # the column that counts the messages aggregated

    @property
    def key_names(self) -> tuple[str, ...]:
        return (*(k for k, _ in self.keys), "window_start")

    @property
    def columns(self) -> tuple[str, ...]:
        return (*self.key_names, *(a for a, _, _ in self.aggs))

    def table(self, grain: str = "window") -> str:
        return f"{self.name}_{grain}"

    def ddl(self, catalog_prefix: str = "") -> list[str]:
        cols = ", ".join([*(f"{k} {t}" for k, t in self.keys), "window_start BIGINT", *(f"{a} {t}" for a, t, _ in self.aggs)])
        pk = ", ".join(self.key_names)
        return [f"CREATE TABLE IF NOT EXISTS {catalog_prefix}{self.table(g)} ({cols}, PRIMARY KEY ({pk}))" for g in GRAINS]

    def merge_select(self, prefix: str = "") -> str:
        """SQL select-list that merges rows of this table's aggregates (use with GROUP BY the keys)."""
        parts = []
        for col, kind, merge in self.aggs:
            if merge == "last":
                parts.append(f"arg_max({prefix}{col}, {prefix}last_ts) AS {col}")
            else:
                cast = "::BIGINT" if kind == "BIGINT" and merge == "sum" else ""
                parts.append(f"{merge}({prefix}{col}){cast} AS {col}")
        return ", ".join(parts)

    def upsert_sql(self, table: str, source: str) -> str:
        """INSERT ... ON CONFLICT that adds the partial aggregates of ``source`` into ``table``."""
        sets = []
        for col, _kind, merge in self.aggs:
            sets.append({
                "sum": f"{col} = {col} + excluded.{col}",
                "min": f"{col} = least({col}, excluded.{col})",
                "max": f"{col} = greatest({col}, excluded.{col})",
                "last": f"{col} = CASE WHEN excluded.last_ts >= last_ts THEN excluded.{col} ELSE {col} END",
            }[merge])
        # "last" columns compare with the old last_ts, so last_ts itself is updated last.
        sets.sort(key=lambda s: s.startswith("last_ts "))
        cols = ", ".join(self.columns)
        return (
            f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {source} "
            f"ON CONFLICT ({', '.join(self.key_names)}) DO UPDATE SET {', '.join(sets)}"
        )


HEALTH = AggTable(
    "health",
    keys=(("service", "VARCHAR"),),
    aggs=(
        ("count", "BIGINT", "sum"),
        *((f"{m}_{agg}", "DOUBLE", "last" if agg == "last" else agg) for m in HEALTH_METRICS for agg in ("sum", "min", "max", "last")),
        ("last_ts", "DOUBLE", "max"),
    ),
)
_DEVICE_KEYS = (("host", "VARCHAR"), ("device", "VARCHAR"), ("op", "VARCHAR"))
DISK_LATENCY = AggTable(
    "disk_latency",
    keys=_DEVICE_KEYS,
    aggs=(
        ("messages", "BIGINT", "sum"),  # disk_latency messages (intervals) aggregated
        ("count", "BIGINT", "sum"),  # I/Os
        ("sum_us", "DOUBLE", "sum"),
        ("max_us", "DOUBLE", "max"),
        ("sketched_count", "BIGINT", "sum"),  # the part of count with sketch buckets (not mean-only)
        ("source", "VARCHAR", "last"),
        ("last_ts", "DOUBLE", "max"),
    ),
    message_count="messages",
)
DISK_LATENCY_BUCKET = AggTable(
    "disk_latency_bucket",
    keys=(*_DEVICE_KEYS, ("bucket", "INTEGER")),
    aggs=(("count", "BIGINT", "sum"),),
)
AGG_TABLES = (HEALTH, DISK_LATENCY, DISK_LATENCY_BUCKET)
VIEWED_TYPES = ("health", "disk_latency")  # message types that views aggregate (host_info is only landed)

# The health family by its columns (used widely).
HEALTH_AGG_COLUMNS: tuple[tuple[str, str], ...] = tuple((a, t) for a, t, _ in HEALTH.aggs)
HEALTH_COLUMNS = HEALTH.columns


def create_schema(con: duckdb.DuckDBPyConnection, catalog: str | None = None) -> None:
    """Create every view table (idempotent) in ``catalog`` (default: the main database)."""
    q = f"{catalog}." if catalog else ""
    for spec in AGG_TABLES:
        for statement in spec.ddl(q):
            con.execute(statement)
    con.execute(
        f"CREATE TABLE IF NOT EXISTS {q}view_meta (horizon BIGINT, built_at DOUBLE, window_s INTEGER,"
        " build_id VARCHAR, hours_rebuilt INTEGER, rows_written BIGINT)"
    )
    con.execute(
        f"CREATE TABLE IF NOT EXISTS {q}view_inputs (msg_type VARCHAR, hour_start BIGINT, fingerprint VARCHAR,"
        " files INTEGER, bytes BIGINT, PRIMARY KEY (msg_type, hour_start))"
    )
    con.execute(
        f"CREATE TABLE IF NOT EXISTS {q}speed_progress (stream VARCHAR PRIMARY KEY, batch_id BIGINT, committed_at DOUBLE,"
        " input_rows BIGINT, max_event_ts DOUBLE, horizon BIGINT)"
    )


@contextlib.contextmanager
def writer_lock(view_path: Path) -> Iterator[None]:
    """Exclusive lock that serializes every writer of one view file, across processes."""
    view_path.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{view_path}.lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def update_view(view_path: Path, change: Callable[[duckdb.DuckDBPyConnection], object], *, fresh: bool = False,
                timings: dict | None = None):
    """Apply ``change`` to a copy of the view (or to a new file if ``fresh``) and publish it atomically.

    Returns what ``change`` returns.  If ``change`` raises, the published view is
    untouched and the copy is removed.  ``timings``, if given, receives the
    seconds each step took (lock, copy, change, checkpoint, publish) and ``bytes``.
    """
    view_path = Path(view_path)
    mark = _Stopwatch(timings)
    with writer_lock(view_path):
        mark("lock")
        # A copy left by a writer that died mid-change (kill -9): under the lock no live writer has one.
        for stale in view_path.parent.glob(f".{view_path.name}.*.tmp*"):
            stale.unlink(missing_ok=True)
        tmp = view_path.with_name(f".{view_path.name}.{uuid.uuid4().hex}.tmp")
        try:
            if view_path.exists() and not fresh:
                shutil.copyfile(view_path, tmp)
            mark("copy")
            con = duckdb.connect(str(tmp))
            try:
                create_schema(con)
                result = change(con)
                mark("change")
                con.execute("CHECKPOINT")
            finally:
                con.close()
            mark("checkpoint")
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
                size = os.fstat(fh.fileno()).st_size
            os.replace(tmp, view_path)
            mark("publish")
            if timings is not None:
                timings["bytes"] = size
            return result
        finally:
            for leftover in (tmp, Path(f"{tmp}.wal")):
                leftover.unlink(missing_ok=True)


class _Stopwatch:
    """Calling it with a step name records the seconds since the previous call into ``timings`` (if not None)."""

    def __init__(self, timings: dict | None) -> None:
        self.timings = timings
        self.last = time.perf_counter()

    def __call__(self, step: str) -> None:
        if self.timings is not None:
            now = time.perf_counter()
            self.timings[step] = now - self.last
            self.last = now


def read_horizon(con: duckdb.DuckDBPyConnection, catalog: str | None = None) -> int:
    """The batch view's horizon (epoch seconds); 0 when no batch has been built."""
    q = f"{catalog}." if catalog else ""
    row = con.execute(f"SELECT max(horizon) FROM {q}view_meta").fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def read_view_horizon(view_path: Path) -> int:
    """Horizon of the published batch view file (0 if there is none)."""
    if not Path(view_path).exists():
        return 0
    con = duckdb.connect(str(view_path), read_only=True)
    try:
        return read_horizon(con)
    finally:
        con.close()


FOLLOW_INTERVAL_S = 0.02
"""How often a following ``ViewReader`` looks for newly published files (its requests do not look: see ``follow``)."""


class ViewReader:
    """Read-only access to both views for any number of threads: two shared DuckDB instances, a cursor per thread.

    An instance is in-memory with the two files ATTACHed read-only as ``b``
    and ``rt``.  A missing file is stood in for by an empty in-memory
    database with the same tables, so queries need no special case.

    ``connection()`` gives this thread a cursor on the *current* instance
    and pins it there until the thread calls ``connection()`` again or
    ``release()`` (the API does at the end of each request): while pinned,
    the files attached there do not change, so one request reads one pair
    of files and ``identity()`` names them.  When a writer has published a
    new file (its identity changed), the first thread to notice attaches it
    to the *spare* instance, once no thread is pinned there any more, and
    makes that one current; the threads that arrive meanwhile read the pair
    before.  So a publication is attached once per process, not once per
    thread and all at once after every publication, no request waits for
    another to finish, and the threads share the buffer pools.

    ``follow(prepare)`` (the API server): from then on a background thread
    does the attaching instead, and calls ``prepare(cursor)`` on the spare
    instance (pinned for it, so ``identity()`` names the new files) before
    making it current: the answers' parts that depend on the new files are
    computed before any request reads them, and requests never wait for a
    publication.  A request may so read the pair before for as long as it
    takes the follower to notice the files (``FOLLOW_INTERVAL_S``), attach
    them and ``prepare``.  Requests then do not stat the files at all.

    The real-time file is looked at before the batch file: the batch layer
    publishes a new horizon first and real-time rows below it are expired
    afterwards, so a reader that sees an expired real-time file then sees the
    batch file that made the expiry possible, and no window goes missing.
    """

    ALIASES = (("rt", REALTIME_VIEW), ("b", BATCH_VIEW))

    def __init__(self, views_dir: Path) -> None:
        self.views_dir = Path(views_dir)
        self._paths = tuple((alias, str(self.views_dir / name)) for alias, name in self.ALIASES)  # stat on every request: no Path objects
        self._local = threading.local()
        self._lock = threading.Condition()
        self._current, self._spare = _Instance(), _Instance()
        self._switching = False  # a thread is attaching new files to the spare instance
        self._prepare: Callable[[duckdb.DuckDBPyConnection], object] | None = None  # set by follow()
        self._on_switch: Callable[[float], object] | None = None
        self._stop = threading.Event()
        self._follower: threading.Thread | None = None

    def connection(self) -> duckdb.DuckDBPyConnection:
        """This thread's cursor with the newest published files attached (or the pair before, while another thread attaches those)."""
        self.release()
        if self._prepare is not None:  # following: the follower looks for new files; no stat here (each one hands the GIL over)
            with self._lock:
                if self._current.identities is not None:
                    return self._pin(self._current)
        identities = self._identities()
        with self._lock:
            while True:
                current = self._current
                if current.identities is not None and (current.identities == identities or self._switching or self._spare.pins):
                    return self._pin(current)
                if not self._switching:
                    break
                self._lock.wait()  # nothing attached yet, and the first attach is under way
            self._switching = True
            spare = self._spare
        try:
            spare.attach(self.views_dir, self.ALIASES, identities)
        finally:
            self._switched(spare, current)
        with self._lock:
            return self._pin(self._current)

    def _switched(self, spare: _Instance, current: _Instance) -> None:
        """The attach to ``spare`` is over: make it current if it holds files (a failed attach leaves ``current``)."""
        with self._lock:
            self._switching = False
            if spare.identities is not None:
                self._current, self._spare = spare, current
            self._lock.notify_all()

    def _identities(self) -> dict[str, tuple[int, ...] | None]:
        return {alias: self._file_identity(path) for alias, path in self._paths}

    def follow(self, prepare: Callable[[duckdb.DuckDBPyConnection], object], interval_s: float | None = FOLLOW_INTERVAL_S,
               on_switch: Callable[[float], object] | None = None) -> None:
        """Attach newly published files in the background, ``prepare(cursor)`` them, then switch requests to them.

        ``interval_s`` None: no thread; the caller calls ``switch_to_newest()`` (tests).  ``on_switch(seconds)``
        after each switch: how long the new files took from being noticed to being read (attach and prepare).
        """
        self._prepare, self._on_switch = prepare, on_switch
        if interval_s is not None and self._follower is None:
            self._follower = threading.Thread(target=self._follow, args=(interval_s,), name="view-follower", daemon=True)
            self._follower.start()

    def _follow(self, interval_s: float) -> None:
        while not self._stop.is_set():
            try:
                self.switch_to_newest()
            except Exception:  # a damaged file, say: requests go on reading the current pair; try again
                log.exception("attaching the newest view files failed; still serving the pair before")
                self._stop.wait(1.0)
            self._stop.wait(interval_s)

    def switch_to_newest(self) -> bool:
        """(Following) attach the newest files on the spare instance, prepare them and make them current; whether there were new ones."""
        identities = self._identities()
        started = time.perf_counter()
        with self._lock:
            current = self._current
            if current.identities == identities or self._switching:
                return False
            self._switching = True
            while self._spare.pins:  # requests that began before the last switch: let them finish
                if self._stop.is_set():
                    self._switching = False
                    return False
                self._lock.wait(0.1)
            spare = self._spare
        try:
            spare.attach(self.views_dir, self.ALIASES, identities)
            with self._lock:
                cursor = self._pin(spare)
            try:
                self._prepare(cursor)
            except Exception:  # requests then compute what they need themselves, as without a follower
                log.exception("preparing answers for the new view files failed")
            finally:
                self.release()
        finally:
            self._switched(spare, current)
        if self._on_switch is not None:
            self._on_switch(time.perf_counter() - started)
        return True

    def _pin(self, instance: _Instance) -> duckdb.DuckDBPyConnection:
        """(Under the lock) pin ``instance`` for this thread; this thread's cursor on it."""
        instance.pins += 1
        local = self._local
        local.pinned = instance
        if not hasattr(local, "cursors"):
            local.cursors = {}
        key = (id(instance), instance.opened)
        cursor = local.cursors.get(key)
        if cursor is None:
            cursor = local.cursors[key] = instance.con.cursor()
            instance.cursors.append(cursor)
        return cursor

    def release(self) -> None:
        """Unpin this thread's instance: the files it read there may be replaced by newer ones."""
        instance = getattr(self._local, "pinned", None)
        if instance is not None:
            self._local.pinned = None
            with self._lock:
                instance.pins -= 1
                if not instance.pins:
                    self._lock.notify_all()

    def identity(self, alias: str) -> tuple[int, ...] | None:
        """(device, inode, size, mtime_ns, ctime_ns) of the file attached as ``alias`` for this thread; None: the empty stand-in.

        A published file never changes, so this names its content: caches of
        answers from the batch view key on it (``serving.queries.BatchCache``).
        """
        return self._local.pinned.identities[alias]

    @staticmethod
    def _file_identity(path: Path | str) -> tuple[int, ...] | None:
        # Inode numbers are reused as soon as a replaced file is gone, and timestamps are as coarse as the kernel's tick:
        # together with the size and the ctime (which the publishing rename sets) two publications never share all five.
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns

    def close_all(self) -> None:
        """Stop following, then close both instances and every cursor on them (once the threads that read are stopped).

        A DuckDB connection left for the interpreter's final garbage collection
        can abort the process at exit ("terminate called without an active exception").
        """
        self._stop.set()
        if self._follower is not None:
            self._follower.join(5)
        with self._lock:
            for instance in (self._current, self._spare):
                instance.close()


class _Instance:
    """One in-memory DuckDB instance of a ``ViewReader`` with the view files attached, and the cursors made on it."""

    def __init__(self) -> None:
        self.con: duckdb.DuckDBPyConnection | None = None
        self.opened = 0  # how many times ``con`` was opened: names this instance's cursors
        self.identities: dict[str, tuple[int, ...] | None] | None = None  # of the attached files, by alias; None: not ready
        self.attached: dict[str, tuple[int, ...] | None] = {}  # what each alias holds (ahead of ``identities`` while attaching)
        self.pins = 0  # threads reading it
        self.cursors: list[duckdb.DuckDBPyConnection] = []

    def attach(self, views_dir: Path, aliases: tuple[tuple[str, str], ...], identities: dict) -> None:
        """Attach the files ``identities`` names (statting again until what is attached is what is named); nobody reads meanwhile."""
        if self.con is None:
            self.con = duckdb.connect(":memory:")
            self.opened += 1
            # One DuckDB thread per query: requests are small and already run in parallel in the
            # server's threads, and a single-threaded sum is deterministic to the last bit.
            self.con.execute("SET threads = 1")
        self.identities = None
        for alias, name in aliases:
            path = views_dir / name
            identity = identities[alias]
            while alias not in self.attached or self.attached[alias] != identity:
                if alias in self.attached:
                    # Forget the old state first: if the ATTACH below fails (a damaged file), the next attempt
                    # must not DETACH an alias that is no longer attached, and retries the ATTACH instead.
                    del self.attached[alias]
                    self.con.execute(f"DETACH DATABASE IF EXISTS {alias}")
                if identity is None:
                    self.con.execute(f"ATTACH ':memory:' AS {alias}")
                    create_schema(self.con, alias)
                else:
                    self.con.execute(f"ATTACH '{path}' AS {alias} (READ_ONLY)")
                self.attached[alias] = identity
                # A file published between the stat and the ATTACH: attach again, so that identities name what is attached.
                identity = ViewReader._file_identity(path)
        self.identities = dict(self.attached)

    def close(self) -> None:
        cursors, self.cursors = self.cursors, []
        for con in [*cursors, self.con]:
            if con is not None:
                with contextlib.suppress(duckdb.Error):
                    con.close()
        self.con, self.identities, self.attached, self.pins = None, None, {}, 0


def expire_below(view_path: Path, horizon: int) -> int:
    """Delete real-time windows below ``horizon`` (the batch view covers them); returns rows deleted."""
    view_path = Path(view_path)
    if not view_path.exists() or horizon <= 0:
        return 0

    return update_view(view_path, lambda con: delete_rows(con, [spec.table() for spec in AGG_TABLES], "window_start < ?", [horizon]))


def delete_rows(con: duckdb.DuckDBPyConnection, tables: list[str], where: str = "TRUE", params: list | None = None) -> int:
    """Delete the rows of ``tables`` that match ``where``; returns how many."""
    return sum(con.execute(f"DELETE FROM {table} WHERE {where}", params or []).fetchone()[0] for table in tables)
