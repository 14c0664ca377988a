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
import os
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import duckdb

from healthmon.schema import HEALTH_METRICS

BATCH_VIEW = "batch.duckdb"
REALTIME_VIEW = "realtime.duckdb"

# Aggregate columns of every health window/rollup row, derived from the metrics.
HEALTH_AGG_COLUMNS: tuple[tuple[str, str], ...] = (
    ("count", "BIGINT"),
    *((f"{m}_{agg}", "DOUBLE") for m in HEALTH_METRICS for agg in ("sum", "min", "max", "last")),
    ("last_ts", "DOUBLE"),
)
HEALTH_KEY_COLUMNS: tuple[tuple[str, str], ...] = (("service", "VARCHAR"), ("window_start", "BIGINT"))
HEALTH_COLUMNS = tuple(name for name, _ in HEALTH_KEY_COLUMNS + HEALTH_AGG_COLUMNS)

HEALTH_TABLES = ("health_window", "health_hour", "health_day")


def merge_select(prefix: str = "") -> str:
    """SQL select-list that merges rows of health aggregates (use with GROUP BY)."""
    parts = [f"sum({prefix}count)::BIGINT AS count"]
    for m in HEALTH_METRICS:
        parts += [
            f"sum({prefix}{m}_sum) AS {m}_sum",
            f"min({prefix}{m}_min) AS {m}_min",
            f"max({prefix}{m}_max) AS {m}_max",
            f"arg_max({prefix}{m}_last, {prefix}last_ts) AS {m}_last",
        ]
    parts.append(f"max({prefix}last_ts) AS last_ts")
    return ", ".join(parts)


def upsert_sql(table: str, source: str) -> str:
    """INSERT ... ON CONFLICT that adds the partial aggregates of ``source`` into ``table``."""
    sets = ["count = count + excluded.count"]
    for m in HEALTH_METRICS:
        sets += [
            f"{m}_sum = {m}_sum + excluded.{m}_sum",
            f"{m}_min = least({m}_min, excluded.{m}_min)",
            f"{m}_max = greatest({m}_max, excluded.{m}_max)",
            f"{m}_last = CASE WHEN excluded.last_ts >= last_ts THEN excluded.{m}_last ELSE {m}_last END",
        ]
    sets.append("last_ts = greatest(last_ts, excluded.last_ts)")
    cols = ", ".join(HEALTH_COLUMNS)
    return (
        f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {source} "
        f"ON CONFLICT (service, window_start) DO UPDATE SET {', '.join(sets)}"
    )


def create_schema(con: duckdb.DuckDBPyConnection, catalog: str | None = None) -> None:
    """Create every view table (idempotent) in ``catalog`` (default: the main database)."""
    q = f"{catalog}." if catalog else ""
    cols = ", ".join(f"{name} {kind}" for name, kind in HEALTH_KEY_COLUMNS + HEALTH_AGG_COLUMNS)
    for table in HEALTH_TABLES:
        con.execute(f"CREATE TABLE IF NOT EXISTS {q}{table} ({cols}, PRIMARY KEY (service, window_start))")
    con.execute(
        f"CREATE TABLE IF NOT EXISTS {q}view_meta (horizon BIGINT, built_at DOUBLE, window_s INTEGER,"
        " build_id VARCHAR, hours_rebuilt INTEGER, rows_written BIGINT)"
    )
    con.execute(
        f"CREATE TABLE IF NOT EXISTS {q}view_inputs (msg_type VARCHAR, hour_start BIGINT, fingerprint VARCHAR,"
        " files INTEGER, bytes BIGINT, PRIMARY KEY (msg_type, hour_start))"
    )
    con.execute(
        f"CREATE TABLE IF NOT EXISTS {q}speed_progress (batch_id BIGINT, committed_at DOUBLE,"
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


def update_view(view_path: Path, change: Callable[[duckdb.DuckDBPyConnection], object], *, fresh: bool = False):
    """Apply ``change`` to a copy of the view (or to a new file if ``fresh``) and publish it atomically.

    Returns what ``change`` returns.  If ``change`` raises, the published view is
    untouched and the copy is removed.
    """
    view_path = Path(view_path)
    with writer_lock(view_path):
        tmp = view_path.with_name(f".{view_path.name}.{uuid.uuid4().hex}.tmp")
        try:
            if view_path.exists() and not fresh:
                shutil.copyfile(view_path, tmp)
            con = duckdb.connect(str(tmp))
            try:
                create_schema(con)
                result = change(con)
                con.execute("CHECKPOINT")
            finally:
                con.close()
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, view_path)
            return result
        finally:
            for leftover in (tmp, Path(f"{tmp}.wal")):
                leftover.unlink(missing_ok=True)


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


class ViewReader:
    """Read-only access to both views, one DuckDB connection per thread.

    The connection is in-memory with the two files ATTACHed read-only as
    ``b`` and ``rt``; a file is re-attached when its inode changes (a writer
    published a new version).  A missing file is stood in for by an empty
    in-memory database with the same tables, so queries need no special case.
    Reopening per request would cost ~17 ms; this costs well under 1 ms.

    The real-time file is looked at before the batch file: the batch layer
    publishes a new horizon first and real-time rows below it are expired
    afterwards, so a reader that sees an expired real-time file then sees the
    batch file that made the expiry possible, and no window goes missing.
    """

    ALIASES = (("rt", REALTIME_VIEW), ("b", BATCH_VIEW))

    def __init__(self, views_dir: Path) -> None:
        self.views_dir = Path(views_dir)
        self._local = threading.local()
        self._all: list[duckdb.DuckDBPyConnection] = []
        self._all_lock = threading.Lock()

    def connection(self) -> duckdb.DuckDBPyConnection:
        local = self._local
        if getattr(local, "con", None) is None:
            local.con = duckdb.connect(":memory:")
            # One DuckDB thread per query: requests are small and already run in parallel in the
            # server's threads, and a single-threaded sum is deterministic to the last bit.
            local.con.execute("SET threads = 1")
            local.inodes = {}
            with self._all_lock:
                self._all.append(local.con)
        for alias, name in self.ALIASES:
            path = self.views_dir / name
            try:
                st = path.stat()
                inode = (st.st_ino, st.st_mtime_ns)
            except FileNotFoundError:
                inode = None
            if alias in local.inodes and local.inodes[alias] == inode:
                continue
            if alias in local.inodes:
                local.con.execute(f"DETACH {alias}")
            if inode is None:
                local.con.execute(f"ATTACH ':memory:' AS {alias}")
                create_schema(local.con, alias)
            else:
                local.con.execute(f"ATTACH '{path}' AS {alias} (READ_ONLY)")
            local.inodes[alias] = inode
        return local.con

    def close_all(self) -> None:
        """Close every thread's connection (once those threads are stopped).

        A DuckDB connection left for the interpreter's final garbage collection
        can abort the process at exit ("terminate called without an active exception").
        """
        with self._all_lock:
            cons, self._all = self._all, []
        for con in cons:
            with contextlib.suppress(duckdb.Error):
                con.close()

def expire_below(view_path: Path, horizon: int) -> int:
    """Delete real-time windows below ``horizon`` (the batch view covers them); returns rows deleted."""
    view_path = Path(view_path)
    if not view_path.exists() or horizon <= 0:
        return 0

    def change(con: duckdb.DuckDBPyConnection) -> int:
        (count,) = con.execute("SELECT count(*) FROM health_window WHERE window_start < ?", [horizon]).fetchone()
        if count:
            con.execute("DELETE FROM health_window WHERE window_start < ?", [horizon])
        return count

    return update_view(view_path, change)
