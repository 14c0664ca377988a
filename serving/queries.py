"""The merged queries: batch view below the horizon, real-time view at or above it.

Pure functions of a DuckDB connection on which the batch view is attached as
``b`` and the real-time view as ``rt`` (``healthmon.views.ViewReader``), plus
parameters.  Every time bound is an integer number of epoch seconds.

The merge rule (DESIGN.md, "Views and the merge rule"): with ``H`` the batch
view's horizon (an hour boundary; 0 before the first build), a window belongs
to the answer when its ``window_start`` lies in the asked range ``[lo, hi)``,
and it is read

- from the batch view when ``window_start < H``, and
- from the real-time view when ``window_start >= H``.

Rows on the "wrong" side (stale batch rows at/above ``H``, real-time rows below
``H`` that are not expired yet) are never read, so no window is counted twice or
missed.  :func:`plan` turns a range into segments ``(table, lo, hi)`` that
partition it along this rule; for the batch part it uses the ``health_day``
and ``health_hour`` rollups for the whole days/hours of the range (both cover
exactly the windows of their day/hour when the day/hour lies below ``H``) and
minute windows for the partial hours at the edges.  A 7-day query so reads
about 170 rows per service instead of 10,080.

Aggregates merge as ``healthmon.views.AggTable.merge_select`` does: count and sum add,
min and max take the extreme; averages are ``sum / count``, computed by the
caller.

Tiers (``batch_jobs.retention``): minute windows, hour rollups and day rollups
are kept for different times.  :func:`tier_span` rounds a range that starts
where a finer tier is gone out to whole hours (or days) there, and gives the
finest step that still has whole buckets, so no answer mixes a rollup with
missing windows.

Caching (``BatchCache``): a published view file never changes, so an answer
computed from given files can be kept, keyed by their identities
(``ViewReader.identity``: inode and mtime; every publication is a new file
with a new identity), and is never stale.  :class:`Snapshot` holds what a
request reads; ``Snapshot.normalized`` first rounds a range to the windows
it really holds (so "the last 7 days" asked every second is one key for a
minute).  The parts below the horizon are keyed by the batch file alone;
the parts that read the real-time view by both files (the real-time part of
series for every service at once: one query per real-time publication).
Each part is computed with :func:`plan` over disjoint windows and merged
like any two sets of windows, so the merge rule and the counts are exactly
those of the uncached functions (:func:`summary`, :func:`series`).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import duckdb

from batch_jobs.retention import TierCutoffs, read_tier_cutoffs
from healthmon.schema import HEALTH_METRICS
from healthmon.views import HEALTH, read_horizon

HOUR = 3600
DAY = 86400
END_OF_TIME = 1 << 62  # "no upper bound" for all-time queries

CACHE_MAX_BYTES = 256 * 2**20
"""Most bytes of batch-view answers one API process keeps: about the 5-minute series over 7 days of 400 services."""
SERIES_CHUNK_STEPS = 96
"""A cached run of series buckets starts on a multiple of this many steps: a rolling range reuses it for 96 steps."""

def family_tables(family: str) -> tuple[str, str, str, str]:
    """The batch window, hour and day tables and the real-time window table of a table family."""
    return f"b.{family}_window", f"b.{family}_hour", f"b.{family}_day", f"rt.{family}_window"


B_WINDOW, B_HOUR, B_DAY, RT_WINDOW = family_tables("health")

Segment = tuple[str, int, int]


def horizon(con: duckdb.DuckDBPyConnection) -> int:
    """The batch view's horizon (0 before the first batch build)."""
    return read_horizon(con, "b")


def tier_cutoffs(con: duckdb.DuckDBPyConnection) -> TierCutoffs:
    """The tier cutoffs retention has applied to the batch view (zeros: nothing deleted yet)."""
    return read_tier_cutoffs(con, "b")


class BatchCache:
    """A thread-safe LRU, bounded in bytes, of answers computed from the batch view file alone.

    Every key starts with the file's identity (``ViewReader.identity``), so
    an entry is never stale: once a build publishes a new file, the old
    file's entries are never asked for again and age out.
    """

    def __init__(self, max_bytes: int = CACHE_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self.hits = self.misses = self.waits = 0  # waits: misses that took the value another thread was computing
        self._entries: OrderedDict[Hashable, tuple[object, int]] = OrderedDict()
        self._computing: dict[Hashable, threading.Event] = {}  # keys being computed, and the event set when done
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: Hashable, compute: Callable[[], tuple[object, int]]):
        """The value of ``key``; on a miss ``compute()`` gives ``(value, size in bytes)`` and it is kept.

        One thread computes a key at a time: the others that miss it meanwhile wait for that value instead
        of computing it too (after a publication every server thread asks for the same new parts at once, and
        computing them side by side made each of them several times slower).
        """
        while True:
            with self._lock:
                entry = self._entries.get(key)
                if entry is not None:
                    self._entries.move_to_end(key)
                    self.hits += 1
                    return entry[0]
                done = self._computing.get(key)
                if done is None:
                    self.misses += 1
                    done = self._computing[key] = threading.Event()
                    break
                self.waits += 1
            done.wait()  # then look again: kept by the thread that computed it (or, if it failed, compute it here)
        try:
            value, size = compute()
        except BaseException:
            with self._lock:
                del self._computing[key]
            done.set()
            raise
        with self._lock:
            del self._computing[key]
            if size <= self.max_bytes:
                self._entries[key] = (value, size)
                self._bytes += size
                while self._bytes > self.max_bytes:
                    _, (_, dropped) = self._entries.popitem(last=False)
                    self._bytes -= dropped
        done.set()
        return value

    @property
    def size_bytes(self) -> int:
        return self._bytes


@dataclass(frozen=True)
class Snapshot:
    """The views as one request reads them: the connection, the files' identities and what the cache keys on.

    ``batch_step`` (``realtime_step``): every health window of the batch
    (real-time) view starts on a multiple of it (1 if not: no promise);
    ``realtime_end``: one past the newest real-time health window start.
    """

    con: duckdb.DuckDBPyConnection
    cache: BatchCache
    batch_id: Hashable
    realtime_id: Hashable
    horizon: int
    cutoffs: TierCutoffs
    batch_step: int
    realtime_step: int
    realtime_end: int

    def normalized(self, lo: int, hi: int) -> tuple[int, int]:
        """A range that holds exactly the windows of ``[lo, hi)`` that the merge rule reads, rounded so that rolling ranges share it.

        ``lo`` goes up to the next window start, ``hi`` down to one past the
        newest real-time window (but not below the horizon), so a "last 7
        days" asked every second names one range for a minute.
        """
        h = self.horizon
        lo = _ceil_to(lo, self.batch_step if lo < h else self.realtime_step)
        if hi > h:
            return lo, max(h, min(_ceil_to(hi, self.realtime_step), self.realtime_end))
        return lo, _ceil_to(hi, self.batch_step)

    def realtime_key(self, hi: int) -> Hashable:
        """What a cached answer over a range ending at ``hi`` depends on besides the batch file: the real-time file if it is read."""
        return self.realtime_id if hi > self.horizon else None


def snapshot(con: duckdb.DuckDBPyConnection, cache: BatchCache, batch_id: Hashable, realtime_id: Hashable, window_s: int) -> Snapshot:
    """The :class:`Snapshot` of the views attached to ``con`` with these identities (``ViewReader.identity``)."""

    def misaligned(catalog: str) -> str:
        return f"count(*) FILTER (WHERE window_start % {int(window_s)} <> 0) FROM {catalog}.{HEALTH.table()}"

    def batch() -> tuple[tuple[int, TierCutoffs, int], int]:
        (odd,) = con.execute(f"SELECT {misaligned('b')}").fetchone()
        return (horizon(con), tier_cutoffs(con), 1 if odd else window_s), 200

    def realtime() -> tuple[tuple[int, int], int]:
        last, odd = con.execute(f"SELECT max(window_start), {misaligned('rt')}").fetchone()
        return (0 if last is None else last + 1, 1 if odd else window_s), 100

    h, cutoffs, batch_step = cache.get((batch_id, "batch facts", window_s), batch)
    realtime_end, realtime_step = cache.get((realtime_id, "real-time facts", window_s), realtime)
    return Snapshot(con, cache, batch_id, realtime_id, h, cutoffs, batch_step, realtime_step, max(h, realtime_end))


@dataclass(frozen=True)
class TierSpan:
    """A range ``[lo, hi)`` rounded out so that no part of it needs a tier that retention has deleted."""

    tier: str  # "window", "hour" or "day": the finest tier that holds the oldest part of the range
    lo: int
    hi: int
    min_step: int  # the finest step with whole buckets (0: any step)


def tier_span(lo: int, hi: int, cutoffs: TierCutoffs) -> TierSpan:
    """``[lo, hi)`` with each end that lies below a tier cutoff rounded out to the unit of the coarser tier.

    The cutoffs are hour (windows) and day (hour rollups) boundaries, so the
    rounded range reads whole hour rollups where windows are gone and whole
    day rollups where hour rollups are gone.  Before the day cutoff nothing
    is left: such days count 0.
    """
    if lo < cutoffs.hour:
        tier, unit = "day", DAY
    elif lo < cutoffs.window:
        tier, unit = "hour", HOUR
    else:
        return TierSpan("window", lo, hi, 0)
    if hi < cutoffs.hour:
        hi = _ceil_to(hi, DAY)
    elif hi < cutoffs.window:
        hi = _ceil_to(hi, HOUR)
    return TierSpan(tier, _floor_to(lo, unit), hi, unit)


# ---------------------------------------------------------------- planning (pure)


def _ceil_to(x: int, unit: int) -> int:
    return -(-x // unit) * unit


def _floor_to(x: int, unit: int) -> int:
    return x // unit * unit


def plan(lo: int, hi: int, horizon_ts: int, step: int | None = None, family: str = "health") -> list[Segment]:
    """Segments ``(table, lo, hi)`` that together hold exactly the windows with start in ``[lo, hi)``.

    ``step`` (seconds) is the bucket size of a series: rollups are used only
    when they fit inside a bucket (hours for a step that is a multiple of an
    hour, days for a multiple of a day).  ``None``: one bucket (summaries).
    """
    segments: list[Segment] = []
    tables = family_tables(family)
    batch_hi = min(hi, horizon_ts)
    if lo < batch_hi:
        use_hours = step is None or step % HOUR == 0
        use_days = step is None or step % DAY == 0
        segments += _batch_segments(lo, batch_hi, use_hours, use_days, tables)
    rt_lo = max(lo, horizon_ts)
    if rt_lo < hi:
        segments.append((tables[3], rt_lo, hi))
    return segments


def _batch_segments(lo: int, hi: int, use_hours: bool, use_days: bool, tables: tuple[str, str, str, str]) -> list[Segment]:
    B_WINDOW, B_HOUR, B_DAY, _ = tables  # noqa: N806 - the same names as the health family's constants
    hour_lo, hour_hi = _ceil_to(lo, HOUR), _floor_to(hi, HOUR)
    if not use_hours or hour_lo >= hour_hi:
        return [(B_WINDOW, lo, hi)]
    segments: list[Segment] = []
    if lo < hour_lo:
        segments.append((B_WINDOW, lo, hour_lo))
    day_lo, day_hi = _ceil_to(hour_lo, DAY), _floor_to(hour_hi, DAY)
    if use_days and day_lo < day_hi:
        if hour_lo < day_lo:
            segments.append((B_HOUR, hour_lo, day_lo))
        segments.append((B_DAY, day_lo, day_hi))
        if day_hi < hour_hi:
            segments.append((B_HOUR, day_hi, hour_hi))
    else:
        segments.append((B_HOUR, hour_lo, hour_hi))
    if hour_hi < hi:
        segments.append((B_WINDOW, hour_hi, hi))
    return segments


def _union(segments: list[Segment], columns: str, service: str | None, **filters: str | None) -> tuple[str, list]:
    """UNION ALL of the segments' rows, with equality filters (``service=`` and any other column=)."""
    filters = {"service": service, **filters}
    parts, params = [], []
    for table, lo, hi in segments:
        where = f"window_start >= {int(lo)} AND window_start < {int(hi)}"
        for column, value in filters.items():
            if value is not None:
                where += f" AND {column} = ?"
                params.append(value)
        parts.append(f"SELECT {columns} FROM {table} WHERE {where}")
    return " UNION ALL ".join(parts), params


def _merge_list(aggs: tuple[str, ...]) -> str:
    """Merged aggregates (cf. ``healthmon.views.AggTable.merge_select``), only those asked for."""
    merge = {"sum": "sum", "min": "min", "max": "max"}
    parts = ["sum(count)::BIGINT AS count"]
    for m in HEALTH_METRICS:
        parts += [f"{merge[a]}({m}_{a}) AS {m}_{a}" for a in aggs]
    parts.append("max(last_ts) AS last_ts")
    return ", ".join(parts)


def _columns(aggs: tuple[str, ...]) -> str:
    return ", ".join(["service", "window_start", "count", *(f"{m}_{a}" for m in HEALTH_METRICS for a in aggs), "last_ts"])


def _dicts(cur: duckdb.DuckDBPyConnection) -> list[dict]:
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


# ---------------------------------------------------------------- queries


SUMMARY_AGGS = ("sum", "max")
SERIES_AGGS = ("sum", "min", "max")


def summary(con: duckdb.DuckDBPyConnection, lo: int, hi: int, horizon_ts: int, service: str | None = None) -> list[dict]:
    """Merged aggregates per service over windows with start in ``[lo, hi)``; services without messages left out.

    Each row: ``service``, ``count``, ``<metric>_sum``, ``<metric>_max``, ``last_ts``; sorted by service.
    """
    return _summary_rows(con, plan(lo, hi, horizon_ts), service)


def _summary_rows(con: duckdb.DuckDBPyConnection, segments: list[Segment], service: str | None) -> list[dict]:
    if not segments:
        return []
    union, params = _union(segments, _columns(SUMMARY_AGGS), service)
    sql = (
        f"SELECT service, {_merge_list(SUMMARY_AGGS)} FROM ({union}) "
        "GROUP BY service HAVING sum(count) > 0 ORDER BY service"
    )
    return _dicts(con.execute(sql, params))


def cached_part(lo: int, hi: int, horizon_ts: int, align: int) -> tuple[int, int]:
    """``(a, e)``: the part of ``[lo, hi)`` below the horizon cut to multiples of ``align``; empty (``a >= e``) if none."""
    return _ceil_to(lo, align), _floor_to(min(hi, horizon_ts), align)


_MERGE_OF = {column: merge for column, _, merge in HEALTH.aggs}


def _merge_row(x: dict, y: dict) -> dict:
    """Two rows of merged aggregates of the same group merged (as ``_merge_list``; SQL NULL is no value)."""
    out = dict(x)
    for column, b in y.items():
        a = out.get(column)
        if a is None or column not in _MERGE_OF:
            out[column] = b
        elif b is not None:
            merge = _MERGE_OF[column]
            out[column] = a + b if merge == "sum" else min(a, b) if merge == "min" else max(a, b)
    return out


def summary_cached(snap: Snapshot, lo: int, hi: int, service: str | None = None) -> list[dict]:
    """:func:`summary` from the cache: the part below the horizon keyed by the batch file, the rest by both files.

    The part from the horizon on is read for every service (one query per real-time publish serves the summaries of
    all services and of each one); a service's row of it is the one a query of that service alone gives.
    """
    con, h = snap.con, snap.horizon
    lo, hi = snap.normalized(lo, hi)
    mid = max(lo, min(hi, h))

    def part(a: int, e: int, of: str | None) -> Callable[[], tuple[dict[str, dict], int]]:
        def compute() -> tuple[dict[str, dict], int]:
            rows = summary(con, a, e, h, of)
            return {r["service"]: r for r in rows}, 400 + 600 * len(rows)
        return compute

    merged = dict(snap.cache.get((snap.batch_id, "summary", lo, mid, service), part(lo, mid, service)))
    if mid < hi:
        realtime = snap.cache.get((snap.batch_id, snap.realtime_key(hi), "summary", mid, hi, None), part(mid, hi, None))
        for name, row in realtime.items() if service is None else [(service, realtime.get(service))]:
            if row is not None:
                merged[name] = _merge_row(merged[name], row) if name in merged else row
    return [merged[name] for name in sorted(merged)]


def series(con: duckdb.DuckDBPyConnection, service: str, lo: int, hi: int, step: int, horizon_ts: int) -> list[dict]:
    """Merged aggregates of one service per bucket ``bucket = window_start // step * step``, windows in ``[lo, hi)``.

    Only buckets that hold rows are returned (sorted); each row: ``bucket``,
    ``count``, ``<metric>_sum|min|max``, ``last_ts``.  Filling empty buckets is
    the caller's business.
    """
    return series_rows(con, service, plan(lo, hi, horizon_ts, step), step)


def series_rows(con: duckdb.DuckDBPyConnection, service: str | None, segments: list[Segment], step: int) -> list[dict]:
    """:func:`series` over the windows of ``segments`` (from :func:`plan`); ``service`` None: of every service (rows with ``service``)."""
    if not segments:
        return []
    return _dicts(_series_cursor(con, service, segments, step))


def _series_cursor(con: duckdb.DuckDBPyConnection, service: str | None, segments: list[Segment], step: int) -> duckdb.DuckDBPyConnection:
    union, params = _union(segments, _columns(SERIES_AGGS), service)
    step = int(step)
    keys = "bucket" if service is not None else "service, bucket"
    sql = (
        f"SELECT {'' if service is not None else 'service, '}window_start // {step} * {step} AS bucket, {_merge_list(SERIES_AGGS)} "
        f"FROM ({union}) GROUP BY {keys} ORDER BY {keys}"
    )
    return con.execute(sql, params)


class RowsByService:
    """Series rows of every service as DuckDB returned them (tuples ordered by service), made dicts one service at a time.

    The real-time part of every service's series is computed after each
    real-time publication, but a request reads one service's rows: turning
    all of them into dicts up front was most of the Python time of that part.
    """

    def __init__(self, cur: duckdb.DuckDBPyConnection) -> None:
        self.names = [d[0] for d in cur.description][1:]  # without "service"
        self.rows = cur.fetchall()
        self.spans: dict[str, tuple[int, int]] = {}
        start = 0
        for i in range(1, len(self.rows) + 1):
            if i == len(self.rows) or self.rows[i][0] != self.rows[start][0]:
                self.spans[self.rows[start][0]] = (start, i)
                start = i

    def of(self, service: str) -> list[dict]:
        """The rows of ``service`` (sorted by bucket), each a new dict of the columns but ``service``."""
        start, end = self.spans.get(service, (0, 0))
        names = self.names
        return [dict(zip(names, row[1:], strict=True)) for row in self.rows[start:end]]

    @property
    def size_bytes(self) -> int:
        return 200 + 300 * len(self.rows)


def series_tail(snap: Snapshot, service: str, lo: int, hi: int, step: int) -> list[dict]:
    """:func:`series` over ``[lo, hi)`` (an edge of a series: a bucket or two) with ``lo`` below the horizon, from the cache.

    Each part is read for every service at once (one query serves every
    service's series): the part below the horizon kept by the batch file
    (a rolling range's partial first bucket changes every minute), the
    real-time part by both files (it changes with every real-time publish).
    """
    con, h = snap.con, snap.horizon
    mid = min(hi, h)
    by_bucket: dict[int, dict] = {}

    def every_service(a: int, e: int) -> Callable[[], tuple[RowsByService, int]]:
        def compute() -> tuple[RowsByService, int]:
            rows = RowsByService(_series_cursor(con, None, plan(a, e, h, step), step))
            return rows, rows.size_bytes
        return compute

    if lo < mid:
        below = snap.cache.get((snap.batch_id, "series, every service", step, lo, mid), every_service(lo, mid))
        by_bucket = {r["bucket"]: r for r in below.of(service)}
    if mid < hi:
        realtime = snap.cache.get((snap.batch_id, snap.realtime_id, "series, every service", step, mid, hi), every_service(mid, hi))
        for row in realtime.of(service):
            bucket = row["bucket"]
            by_bucket[bucket] = _merge_row(by_bucket[bucket], row) if bucket in by_bucket else row
    return [by_bucket[b] for b in sorted(by_bucket)]


def services(con: duckdb.DuckDBPyConnection, horizon_ts: int) -> list[dict]:
    """Every service ever seen: ``service``, ``count`` (all messages, merged), ``last_ts``; sorted by name."""
    union, params = _union(plan(0, END_OF_TIME, horizon_ts), "service, count, last_ts", None)
    sql = f"SELECT service, sum(count)::BIGINT AS count, max(last_ts) AS last_ts FROM ({union}) GROUP BY service ORDER BY service"
    return _dicts(con.execute(sql, params))


def service_exists(con: duckdb.DuckDBPyConnection, service: str, horizon_ts: int) -> bool:
    """Whether ``service`` has any row in the merged views (all time)."""
    union, params = _union(plan(0, END_OF_TIME, horizon_ts), "1 AS one", service)
    return con.execute(f"SELECT 1 FROM ({union}) LIMIT 1", params).fetchone() is not None


# ---------------------------------------------------------------- pipeline status


def table_rows(con: duckdb.DuckDBPyConnection, catalog: str) -> dict[str, int]:
    """Row count of every table of an attached view, by table name."""
    names = [
        row[0]
        for row in con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = ? ORDER BY table_name", [catalog]
        ).fetchall()
    ]
    if not names:
        return {}
    sql = " UNION ALL ".join(f"SELECT '{n}', count(*) FROM {catalog}.\"{n}\"" for n in names)
    return {name: int(count) for name, count in con.execute(sql).fetchall()}


def view_meta(con: duckdb.DuckDBPyConnection) -> dict | None:
    """The batch view's newest ``view_meta`` row, or None before the first build."""
    rows = _dicts(con.execute("SELECT * FROM b.view_meta ORDER BY horizon DESC NULLS LAST, built_at DESC NULLS LAST LIMIT 1"))
    return rows[0] if rows else None


def speed_progress(con: duckdb.DuckDBPyConnection) -> dict | None:
    """The real-time view's last committed micro-batch, or None."""
    rows = _dicts(
        con.execute("SELECT * FROM rt.speed_progress ORDER BY committed_at DESC NULLS LAST, batch_id DESC NULLS LAST LIMIT 1")
    )
    return rows[0] if rows else None


# ---------------------------------------------------------------- drive latency


def disks(con: duckdb.DuckDBPyConnection, horizon_ts: int) -> list[dict]:
    """Every (host, device) ever seen: ``last_ts``, ``source`` (of the newest interval), ``ops``, ``count`` (I/Os)."""
    union, params = _union(plan(0, END_OF_TIME, horizon_ts, family="disk_latency"), "host, device, op, count, source, last_ts", None)
    sql = (
        f"SELECT host, device, max(last_ts) AS last_ts, arg_max(source, last_ts) AS source, list(DISTINCT op ORDER BY op) AS ops, "
        f"sum(count)::BIGINT AS count FROM ({union}) GROUP BY host, device ORDER BY host, device"
    )
    return _dicts(con.execute(sql, params))


def disk_latency(
    con: duckdb.DuckDBPyConnection, host: str, device: str, op: str | None, lo: int, hi: int, step: int, horizon_ts: int
) -> tuple[list[dict], dict[int, list[tuple[int, int]]]]:
    """Per bucket ``window_start // step * step``: merged count, sum_us, max_us, sketched_count; and the merged sketch buckets."""
    step = int(step)
    filters = {"host": host, "device": device, "op": op}
    union, params = _union(plan(lo, hi, horizon_ts, step, "disk_latency"), "window_start, count, sum_us, max_us, sketched_count",
                           None, **filters)
    totals = _dicts(con.execute(
        f"SELECT window_start // {step} * {step} AS bucket, sum(count)::BIGINT AS count, sum(sum_us) AS sum_us, max(max_us) AS max_us, "
        f"sum(sketched_count)::BIGINT AS sketched_count FROM ({union}) GROUP BY bucket ORDER BY bucket",
        params,
    ))
    union, params = _union(plan(lo, hi, horizon_ts, step, "disk_latency_bucket"), "window_start, bucket, count", None, **filters)
    sketches: dict[int, list[tuple[int, int]]] = {}
    for start, bucket, count in con.execute(
        f"SELECT window_start // {step} * {step} AS ws, bucket, sum(count)::BIGINT FROM ({union}) GROUP BY ws, bucket ORDER BY ws, bucket",
        params,
    ).fetchall():
        sketches.setdefault(int(start), []).append((int(bucket), int(count)))
    return totals, sketches


def disk_exists(con: duckdb.DuckDBPyConnection, host: str, device: str, horizon_ts: int) -> bool:
    union, params = _union(plan(0, END_OF_TIME, horizon_ts, family="disk_latency"), "1 AS one", None, host=host, device=device)
    return con.execute(f"SELECT 1 FROM ({union}) LIMIT 1", params).fetchone() is not None


def disk_sketches(con: duckdb.DuckDBPyConnection, lo: int, hi: int, horizon_ts: int) -> dict[tuple[str, str, str], list[tuple[int, int]]]:
    """Merged sketch buckets per (host, device, op) over windows with start in ``[lo, hi)``."""
    union, params = _union(plan(lo, hi, horizon_ts, family="disk_latency_bucket"), "host, device, op, bucket, count", None)
    out: dict[tuple[str, str, str], list[tuple[int, int]]] = {}
    for host, device, op, bucket, count in con.execute(
        f"SELECT host, device, op, bucket, sum(count)::BIGINT FROM ({union}) GROUP BY ALL ORDER BY ALL", params
    ).fetchall():
        out.setdefault((host, device, op), []).append((int(bucket), int(count)))
    return out
