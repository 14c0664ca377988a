"""Is each service and host still sending?  ``up``, ``stale`` or ``missing``, learnt from its own history.

For every source (a service of the ``health`` messages; a host of the
``disk_latency`` messages) over the merged views:

- ``silent_s = now - last_ts``: how long since its newest message;
- ``expected_interval_s``: its usual gap between messages, learnt from the last
  ``liveness_history_s``: the span from the start of its first window with a
  message in that period to its newest message, divided by the number of
  messages after the first (``span / (n - 1)``).  Windows carry counts, not
  each arrival, so this over-estimates by at most one window spread over the
  messages; it is ``null`` with fewer than two messages in the period.  A host
  sends one ``disk_latency`` message per device and op each interval, so a
  host's interval is the smallest of its (device, op) streams' intervals;
- ``stale_after_s = max(liveness_stale_factor * expected_interval_s,
  liveness_stale_min_s)`` (the floor covers the pipeline's own delay; with
  no learnt interval a source is never ``stale``, only ``missing``);
- ``missing_after_s = max(liveness_missing_s, 2 * stale_after_s)``: a source
  that normally sends less often than the limit is not called missing before
  twice its stale time.

``status`` is ``missing`` when ``silent_s > missing_after_s``, else ``stale``
when ``silent_s > stale_after_s``, else ``up``.  Pure functions of a
connection (``b``/``rt`` attached), ``now`` and the settings, so callers
(the API, the alert rules, ``healthmon top``) inject the clock.
"""

from __future__ import annotations

import duckdb

from healthmon.config import Settings
from healthmon.schema import HEALTH_METRICS
from serving import queries

STATUSES = ("up", "stale", "missing")


def classify(silent_s: float, interval_s: float | None, settings: Settings) -> tuple[str, float | None, float]:
    """``(status, stale_after_s, missing_after_s)`` of a source silent for ``silent_s`` with its usual interval."""
    stale_after = None if interval_s is None else max(settings.liveness_stale_factor * interval_s, settings.liveness_stale_min_s)
    missing_after = settings.liveness_missing_s if stale_after is None else max(settings.liveness_missing_s, 2 * stale_after)
    if silent_s > missing_after:
        return "missing", stale_after, missing_after
    if stale_after is not None and silent_s > stale_after:
        return "stale", stale_after, missing_after
    return "up", stale_after, missing_after


def _history(con: duckdb.DuckDBPyConnection, family: str, keys: tuple[str, ...], count_column: str, extra: str,
             now: float, settings: Settings, horizon: int) -> list[dict]:
    """Per key over the history period's windows: ``n`` messages, ``first_start``, ``last_ts`` and ``extra``."""
    window = settings.window_s
    lo = int((now - settings.liveness_history_s) // window * window)
    # step=window_s: minute windows only, so first_start is a window's start, not an hour's
    segments = queries.plan(lo, queries.END_OF_TIME, horizon, window, family)
    key_list = ", ".join(keys)
    columns = f"{key_list}, window_start, {count_column} AS n, last_ts" + (f", {extra}" if extra else "")
    union, params = queries._union(segments, columns, None)
    aggregates = "sum(n)::BIGINT AS n, min(window_start) AS first_start, max(last_ts) AS last_ts"
    if extra:
        aggregates += ", " + ", ".join(f"arg_max({c}, last_ts) AS {c}" for c in extra.split(", "))
    sql = f"SELECT {key_list}, {aggregates} FROM ({union}) WHERE n > 0 GROUP BY {key_list}"
    return queries._dicts(con.execute(sql, params))


def _interval(row: dict | None) -> float | None:
    if row is None or row["n"] < 2:
        return None
    return max(0.0, row["last_ts"] - row["first_start"]) / (row["n"] - 1)


def _status_fields(last_ts: float, interval: float | None, now: float, settings: Settings) -> dict:
    silent = max(0.0, now - last_ts)
    status, stale_after, missing_after = classify(silent, interval, settings)
    return {
        "status": status, "silent_s": silent, "expected_interval_s": interval,
        "stale_after_s": stale_after, "missing_after_s": missing_after,
    }


def service_statuses(con: duckdb.DuckDBPyConnection, now: float, settings: Settings) -> list[dict]:
    """Every service ever seen, by name: ``service``, ``count`` (all time), ``last_ts``, status fields and ``current``.

    ``current`` holds each metric's newest value within the history period
    (``None`` for a service silent for longer).
    """
    horizon = queries.horizon(con)
    last_columns = ", ".join(f"{m}_last" for m in HEALTH_METRICS)
    recent = {r["service"]: r for r in _history(con, "health", ("service",), "count", last_columns, now, settings, horizon)}
    out = []
    for row in queries.services(con, horizon):
        history = recent.get(row["service"])
        out.append({
            "service": row["service"], "count": row["count"], "last_ts": row["last_ts"],
            **_status_fields(row["last_ts"], _interval(history), now, settings),
            "current": {m: (history[f"{m}_last"] if history else None) for m in HEALTH_METRICS},
        })
    return out


def host_statuses(con: duckdb.DuckDBPyConnection, now: float, settings: Settings) -> list[dict]:
    """Every host that sent drive latency, by name: ``host``, ``last_ts``, ``devices`` and status fields."""
    horizon = queries.horizon(con)
    streams = _history(con, "disk_latency", ("host", "device", "op"), "messages", "", now, settings, horizon)
    intervals: dict[str, list[float]] = {}
    for stream in streams:
        interval = _interval(stream)
        if interval is not None:
            intervals.setdefault(stream["host"], []).append(interval)
    hosts: dict[str, dict] = {}
    for disk in queries.disks(con, horizon):
        host = hosts.setdefault(disk["host"], {"host": disk["host"], "last_ts": disk["last_ts"], "devices": []})
        host["last_ts"] = max(host["last_ts"], disk["last_ts"])
        host["devices"].append(disk["device"])
    return [
        {**host, **_status_fields(host["last_ts"], min(intervals.get(name, ()), default=None), now, settings)}
        for name, host in sorted(hosts.items())
    ]
