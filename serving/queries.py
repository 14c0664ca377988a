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
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb

from batch_jobs.retention import TierCutoffs, read_tier_cutoffs
from healthmon.schema import HEALTH_METRICS
from healthmon.views import read_horizon

HOUR = 3600
DAY = 86400
END_OF_TIME = 1 << 62  # "no upper bound" for all-time queries



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
    segments = plan(lo, hi, horizon_ts)
    if not segments:
        return []
    union, params = _union(segments, _columns(SUMMARY_AGGS), service)
    sql = (
        f"SELECT service, {_merge_list(SUMMARY_AGGS)} FROM ({union}) "
        "GROUP BY service HAVING sum(count) > 0 ORDER BY service"
    )
    return _dicts(con.execute(sql, params))


def series(con: duckdb.DuckDBPyConnection, service: str, lo: int, hi: int, step: int, horizon_ts: int) -> list[dict]:
    """Merged aggregates of one service per bucket ``bucket = window_start // step * step``, windows in ``[lo, hi)``.

    Only buckets that hold rows are returned (sorted); each row: ``bucket``,
    ``count``, ``<metric>_sum|min|max``, ``last_ts``.  Filling empty buckets is
    the caller's business.
    """
    segments = plan(lo, hi, horizon_ts, step)
    if not segments:
        return []
    union, params = _union(segments, _columns(SERIES_AGGS), service)
    step = int(step)
    sql = (
        f"SELECT window_start // {step} * {step} AS bucket, {_merge_list(SERIES_AGGS)} FROM ({union}) "
        "GROUP BY bucket ORDER BY bucket"
    )
    return _dicts(con.execute(sql, params))


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
