"""The Flask application of the HTTP API: merged answers over the batch and real-time views.

``create_app(settings, clock=time.time)`` builds it; ``serving.server.run``
serves it with waitress.  One ``ViewReader`` per app gives every worker thread
a cursor on a DuckDB instance shared by the threads, with both view files
attached read-only; a newly published file is attached once per process (not
once per thread), and most answers come from a cache of parts keyed by the
files (``serving.queries.BatchCache``).  Under a server
(``serving.server.ApiServer``) a background thread looks for new files,
attaches them and computes the parts of answers that requests asked for lately
before requests switch to them (``follow_views``, ``serving.warming``), so no
request stats a file or waits for a publication.  The SQL and the merge rule
live in ``serving.queries``; parameter parsing in ``serving.params``; the one error
shape in ``serving.errors``.

Answers (every time is ISO-8601 UTC with ``Z``; ``*_ts`` fields are epoch
seconds):

- ``GET /api/v1/services`` -> ``{"now", "now_ts", "services": [{"service",
  "count", "last_seen", "last_seen_ts", "status" (up|stale|missing),
  "silent_s", "expected_interval_s", "stale_after_s", "missing_after_s",
  "current": {metric: newest value}}]}`` sorted by name; ``count`` is every
  message ever (merged views); liveness as ``serving.liveness`` says.
- ``GET /api/v1/hosts`` -> ``{"now", "now_ts", "hosts": [{"host", "devices",
  "last_seen", "last_seen_ts", "status", ...}]}``: the senders of drive latency.
- ``GET /api/v1/summary?from=&to=&service=`` -> ``{"from", "to", "from_ts",
  "to_ts", "horizon", "tier", "effective_from", "effective_to",
  "effective_from_ts", "effective_to_ts", "services": [{"service", "count", "last_seen",
  "cpu_pct": {"avg", "max"}, "ram_used_pct": {...}, "disk_used_pct": {...}}]}``.
  ``tier`` (window, hour or day) is the finest tier retention has left for
  the start of the range; where windows (hour rollups) are gone the range is
  rounded out to whole hours (days): the ``effective_*`` range is the one
  counted (``serving.queries.tier_span``).
- ``GET /api/v1/services/<name>/series?from=&to=&step=`` -> ``{"service",
  "step", "step_s", "step_requested", "from", "to", "from_ts", "to_ts", "horizon",
  "tier", "effective_*", "points":
  [{"start", "ts", "count", "cpu_pct": {"avg", "min", "max"}, ...}]}``: one
  point per bucket of ``step`` (aligned to multiples of the step since the
  epoch) from the bucket holding ``from`` to the one holding ``to``; a point
  covers the windows of its bucket that lie in ``[from, to)`` (so the edge
  buckets may be partial, and the counts of a series add up to the summary's);
  an empty bucket has count 0 and null metrics.  Where the range reaches an
  expired tier, the step is at least 1h (1d), a finer asked step
  (``step_requested``; null when defaulted) is raised, and points cover the
  effective range.
- ``GET /api/v1/pipeline`` -> ``{"now", "horizon" (ISO or null), "horizon_ts"
  (epoch or null before the first build), "batch": {"last_builds" (newest
  first, at most 10), "built_at", "built_at_ts", "meta" (the view_meta row),
  "view_rows": {table: rows}}, "speed": {"batch_id", "committed_at",
  "committed_at_ts", "input_rows", "max_event_ts", "max_event", "horizon_ts",
  "lag_s" (now - committed_at), "view_rows", "state" (state/speed.json, when
  present)}, "collectors": {name: counters of state/collector-*.json}}``.
- ``GET /healthz`` -> ``{"status": "ok", "views": {"batch": bool, "realtime": bool}}``.

A window counts in a range ``[from, to)`` when its ``window_start`` lies in
it.  Errors: see ``serving.errors``.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable

import orjson
from flask import Flask, Response, g, request
from flask.json.provider import JSONProvider
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from healthmon import sketch
from healthmon.config import Settings
from healthmon.schema import HEALTH_METRICS, NAME_RE
from healthmon.state import read_runs, read_state, read_states
from healthmon.views import BATCH_VIEW, FOLLOW_INTERVAL_S, REALTIME_VIEW, ViewReader
from serving import alerts_api, dashboard, liveness, openapi, queries
from serving.disk_health import drive_health
from serving.errors import bad_parameter, not_found, register_error_handlers
from serving.metrics import make_registry
from serving.params import STEP_LABELS, check_known, choose_step, iso, parse_range, parse_service, parse_step
from serving.warming import Demand

API = "/api/v1"
PERCENTILES = (("p50_us", 0.50), ("p95_us", 0.95), ("p99_us", 0.99))


class OrjsonProvider(JSONProvider):
    """JSON through orjson: several times faster than the stdlib; NaN/inf become null."""

    def dumps(self, obj, **kwargs) -> str:
        return orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS).decode()

    def loads(self, s, **kwargs):
        return orjson.loads(s)

    def response(self, *args, **kwargs) -> Response:
        obj = self._prepare_response_obj(args, kwargs)
        return self._app.response_class(orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS), mimetype="application/json")


def _avg(total, count):
    return total / count if count and total is not None else None


def _num(value):
    """A float for JSON; None for SQL NULL and non-finite values."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


EMPTY_METRICS = {m: {"avg": None, "min": None, "max": None} for m in HEALTH_METRICS}
bucket_iso = functools.lru_cache(maxsize=1 << 16)(iso)  # the same bucket starts are rendered by request after request


def series_point(start: int, row: dict | None) -> bytes:
    """One point of a series answer as JSON: the bucket starting at ``start`` with its merged ``row`` (None: no windows)."""
    point = {"start": bucket_iso(start), "ts": start}
    if row is None:
        point["count"] = 0
        point.update(EMPTY_METRICS)
    else:
        count = row["count"]
        point["count"] = count
        for m in HEALTH_METRICS:
            point[m] = {"avg": _avg(row[f"{m}_sum"], count), "min": _num(row[f"{m}_min"]), "max": _num(row[f"{m}_max"])}
    return orjson.dumps(point)


def range_fields(frm: float, to: float, step: int, horizon: int, requested: int | None = None) -> dict:
    """The range part of a series answer: step (used and asked), from/to (ISO and epoch) and the horizon."""
    return {
        "step": STEP_LABELS[step], "step_s": step, "step_requested": STEP_LABELS[requested] if requested else None,
        "from": iso(frm), "to": iso(to), "from_ts": frm, "to_ts": to,
        "horizon": iso(horizon) if horizon else None,
    }


def tier_fields(span: queries.TierSpan, frm: float, to: float, lo: int, hi: int) -> dict:
    """Which tier the range reaches and the range the answer covers (``from``/``to`` rounded out where finer tiers are gone)."""
    covered_from = frm if span.lo == lo else span.lo
    covered_to = to if span.hi == hi else span.hi
    return {
        "tier": span.tier, "effective_from": iso(covered_from), "effective_to": iso(covered_to),
        "effective_from_ts": covered_from, "effective_to_ts": covered_to,
    }


def create_app(settings: Settings, clock: Callable[[], float] = time.time) -> Flask:
    """The API's Flask app over ``settings.views_dir`` and ``settings.state_dir``; ``clock`` gives "now"."""
    app = Flask("serving")
    app.json = OrjsonProvider(app)
    app.config["HEALTHMON_SETTINGS"] = settings
    reader = ViewReader(settings.views_dir)
    app.extensions["healthmon.reader"] = reader
    batch_cache = queries.BatchCache()
    app.extensions["healthmon.batch_cache"] = batch_cache
    register_error_handlers(app)

    def connection():
        return reader.connection()

    @app.teardown_request
    def unpin_view_files(_exc):
        reader.release()  # the files this request read may now be replaced by newer ones (ViewReader.connection)

    def snapshot_of(con) -> queries.Snapshot:
        """The views as read through ``con``, a cursor pinned by this thread (``ViewReader.identity`` names its files)."""
        return queries.snapshot(con, batch_cache, reader.identity("b"), reader.identity("rt"), settings.window_s)

    def views() -> queries.Snapshot:
        return snapshot_of(connection())

    registry, request_latency, switch_latency = make_registry(settings, connection, clock, cache=batch_cache)
    demand = Demand()  # the answers over the real-time view that requests asked for lately (serving.warming)
    app.extensions["healthmon.demand"] = demand

    def follow_views(interval_s: float | None = FOLLOW_INTERVAL_S) -> None:
        """Attach new view files and prepare answers for them in the background, so no request waits (the API server calls it)."""
        reader.follow(lambda con: demand.prepare(snapshot_of(con)), interval_s, switch_latency.observe)

    app.extensions["healthmon.follow_views"] = follow_views

    @app.before_request
    def start_timer():
        g.request_started = time.perf_counter()

    @app.after_request
    def observe_latency(response: Response) -> Response:
        started = g.get("request_started")
        if started is not None:
            endpoint = request.url_rule.rule if request.url_rule is not None else "unmatched"
            request_latency.labels(endpoint, str(response.status_code)).observe(time.perf_counter() - started)
        return response

    @app.get("/metrics")
    def metrics():
        """The pipeline's metrics in the Prometheus text exposition format."""
        return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)

    def range_args(extra: tuple[str, ...]) -> tuple[float, float, int, int]:
        check_known(request.args, ("from", "to", *extra))
        frm, to = parse_range(request.args, clock(), settings.api_default_range_s, settings.api_max_range_days)
        # window_start is an integer: start >= from <=> start >= ceil(from); start < to <=> start < ceil(to)
        return frm, to, math.ceil(frm), math.ceil(to)

    def with_last_seen(row: dict) -> dict:
        row = dict(row)
        last_ts = row.pop("last_ts")
        return {**row, "last_seen": iso(last_ts), "last_seen_ts": last_ts}

    @app.get(f"{API}/services")
    def services():
        check_known(request.args, ())
        now = clock()
        rows = liveness.service_statuses(connection(), now, settings)
        return {"now": iso(now), "now_ts": now, "services": [with_last_seen(r) for r in rows]}

    @app.get(f"{API}/hosts")
    def hosts():
        check_known(request.args, ())
        now = clock()
        rows = liveness.host_statuses(connection(), now, settings)
        return {"now": iso(now), "now_ts": now, "hosts": [with_last_seen(r) for r in rows]}

    @app.get(f"{API}/summary")
    def summary():
        frm, to, lo, hi = range_args(("service",))
        service = parse_service(request.args.get("service"))
        snap = views()
        horizon = snap.horizon
        span, services = summary_services(snap, lo, hi, service)
        if service is not None and services == b"[]" and not queries.service_exists(snap.con, service, horizon):
            raise not_found(f"unknown service {service!r}")
        if span.hi > horizon:  # its real-time part: prepared for new files
            demand.note(("summary", service, hi - lo), summary_services, lo, hi, service)
        return {
            "from": iso(frm), "to": iso(to), "from_ts": frm, "to_ts": to,
            "horizon": iso(horizon) if horizon else None,
            **tier_fields(span, frm, to, lo, hi),
            "services": orjson.Fragment(services),
        }

    def summary_services(snap: queries.Snapshot, lo: int, hi: int, service: str | None) -> tuple[queries.TierSpan, bytes]:
        """The tier span of a summary over ``[lo, hi)`` and its list of services as JSON (cached by the files and the range)."""
        span = queries.tier_span(lo, hi, snap.cutoffs)
        normalized = snap.normalized(span.lo, span.hi)

        def render_services() -> tuple[bytes, int]:
            out = []
            for r in queries.summary_cached(snap, span.lo, span.hi, service):
                item = {"service": r["service"], "count": r["count"], "last_seen": iso(r["last_ts"])}
                for m in HEALTH_METRICS:
                    item[m] = {"avg": _avg(r[f"{m}_sum"], r["count"]), "max": _num(r[f"{m}_max"])}
                out.append(item)
            rendered = orjson.dumps(out)
            return rendered, len(rendered) + 100

        # The whole list depends on both files and the range only: cached by them (queries.BatchCache).
        return span, snap.cache.get((snap.batch_id, snap.realtime_key(normalized[1]), "summary answer", *normalized, service),
                                    render_services)

    def series_plan(snap: queries.Snapshot, frm: float, to: float, lo: int, hi: int, raw_step: str | None):
        """(step asked or None, horizon, tier span, step used, first bucket, buckets) of a series (``step`` parameter ``raw_step``)."""
        requested = parse_step(raw_step) if raw_step is not None else None
        span = queries.tier_span(lo, hi, snap.cutoffs)
        step, first, n = choose_step(raw_step, frm, to, settings.window_s, settings.api_max_points, span.min_step)
        return requested, snap.horizon, span, step, first, n

    @app.get(f"{API}/services/<name>/series")
    def series(name: str):
        frm, to, lo, hi = range_args(("step",))
        if not NAME_RE.match(name):
            raise not_found(f"unknown service {name[:60]!r}")
        snap = views()
        raw_step = request.args.get("step")
        requested, horizon, span, step, first, n = series_plan(snap, frm, to, lo, hi, raw_step)
        points, found = series_points(snap, name, span.lo, span.hi, step, first, first + n * step)
        if not found and not queries.service_exists(snap.con, name, horizon):
            raise not_found(f"unknown service {name!r}")
        if span.hi > horizon:  # the real-time part of every service's series at this step: prepared for new files
            demand.note(("series", raw_step, hi - lo), prepare_series, name, frm, to, lo, hi, raw_step)
        return {
            "service": name, **range_fields(frm, to, step, horizon, requested),
            **tier_fields(span, frm, to, lo, hi), "points": orjson.Fragment(b"[" + b",".join(points) + b"]"),
        }

    def prepare_series(snap: queries.Snapshot, name: str, frm: float, to: float, lo: int, hi: int, raw_step: str | None) -> None:
        _, _, span, step, first, n = series_plan(snap, frm, to, lo, hi, raw_step)
        series_points(snap, name, span.lo, span.hi, step, first, first + n * step)

    def series_points(snap: queries.Snapshot, name: str, lo: int, hi: int, step: int, first: int, end: int) -> tuple[list[bytes], bool]:
        """The JSON points of the buckets ``first, first + step, ... < end`` over windows in ``[lo, hi)``; whether any window was found.

        Whole buckets below the horizon come from a cached run of rendered
        points that starts on a multiple of ``SERIES_CHUNK_STEPS`` steps (a
        rolling range reuses it); the partial first bucket and the buckets
        from the horizon on are read from the cache too (``queries.series_tail``)
        and rendered afresh.
        """
        h = snap.horizon
        lo, hi = snap.normalized(lo, hi)
        a, e = queries.cached_part(lo, hi, h, step)
        e = min(e, end)
        if a >= e:  # no whole bucket below the horizon: one query, kept by both files
            rows = snap.cache.get((snap.batch_id, snap.realtime_key(hi), "series", name, step, lo, hi),
                                  lambda: (queries.series(snap.con, name, lo, hi, step, h), 200 + 300 * (hi - lo) // step))
            (points, _), _ = render(rows, range(first, end, step))
            return points, bool(rows)
        chunk = step * queries.SERIES_CHUNK_STEPS
        run_start = a // chunk * chunk
        rendered, counts = snap.cache.get(
            (snap.batch_id, "series run", name, step, run_start, e),
            lambda: render(queries.series(snap.con, name, run_start, e, step, h), range(run_start, e, step)),
        )
        i, j = (a - run_start) // step, (e - run_start) // step
        head = queries.series_tail(snap, name, lo, a, step) if lo < a else []
        tail = queries.series_tail(snap, name, e, hi, step) if e < hi else []
        (head_points, _), _ = render(head, range(first, a, step))
        (tail_points, _), _ = render(tail, range(e, end, step))
        return [*head_points, *rendered[i:j], *tail_points], bool(head or tail) or any(counts[i:j])

    def render(rows: list[dict], starts: range) -> tuple[tuple[list[bytes], list[int]], int]:
        """((JSON points, counts) of the buckets ``starts`` from series rows, size in bytes)."""
        by_bucket = {r["bucket"]: r for r in rows}
        points = [series_point(start, by_bucket.get(start)) for start in starts]
        counts = [by_bucket[start]["count"] if start in by_bucket else 0 for start in starts]
        return (points, counts), sum(map(len, points)) + 100 * len(points)

    @app.get(f"{API}/pipeline")
    def pipeline():
        check_known(request.args, ())
        now = clock()
        con = connection()
        horizon = queries.horizon(con)
        meta = queries.view_meta(con)
        progress = queries.speed_progress(con)
        built_at = meta.get("built_at") if meta else None
        progress = progress or {}
        committed = progress.get("committed_at")
        speed: dict = {
            "batch_id": progress.get("batch_id"),
            "committed_at": iso(committed),
            "committed_at_ts": committed,
            "input_rows": progress.get("input_rows"),
            "max_event_ts": progress.get("max_event_ts"),
            "max_event": iso(progress.get("max_event_ts")),
            "horizon_ts": progress.get("horizon"),
            "lag_s": None if committed is None else max(0.0, now - committed),
        }
        speed["view_rows"] = queries.table_rows(con, "rt")
        state = read_state(settings.state_dir, "speed")
        if state is not None:
            speed["state"] = state
        return {
            "now": iso(now),
            "horizon": iso(horizon) if horizon else None,
            "horizon_ts": horizon or None,
            "batch": {
                "last_builds": read_runs(settings.state_dir)[:10],
                "built_at": iso(built_at),
                "built_at_ts": built_at,
                "meta": meta,
                "view_rows": queries.table_rows(con, "b"),
            },
            "speed": speed,
            "collectors": read_states(settings.state_dir, "collector-"),
        }

    @app.get(f"{API}/disks")
    def disk_list():
        check_known(request.args, ())
        con = connection()
        return {
            "disks": [
                {"host": r["host"], "device": r["device"], "ops": list(r["ops"]), "count": r["count"], "source": r["source"],
                 "last_seen": iso(r["last_ts"]), "last_seen_ts": r["last_ts"]}
                for r in queries.disks(con, queries.horizon(con))
            ]
        }

    @app.get(f"{API}/disks/health")
    def disk_health():
        check_known(request.args, ())
        return drive_health(connection(), clock(), settings)

    @app.get(f"{API}/disks/<host>/<device>/latency")
    def disk_latency(host: str, device: str):
        frm, to, lo, hi = range_args(("step", "op"))
        op = request.args.get("op")
        if op not in (None, "read", "write"):
            raise bad_parameter(f"op={op[:20]!r}: must be read or write")
        if not (NAME_RE.match(host) and NAME_RE.match(device)):
            raise not_found(f"unknown device {host[:60]!r}/{device[:60]!r}")
        snap = views()
        con = snap.con
        requested, horizon, span, step, first, n = series_plan(snap, frm, to, lo, hi, request.args.get("step"))
        totals, sketches = queries.disk_latency(con, host, device, op, span.lo, span.hi, step, horizon)
        if not totals and not queries.disk_exists(con, host, device, horizon):
            raise not_found(f"unknown device {host!r}/{device!r}")
        by_bucket = {r["bucket"]: r for r in totals}
        points = []
        for i in range(n):
            start = first + i * step
            r = by_bucket.get(start)
            count = r["count"] if r else 0
            pairs = sketches.get(start, [])
            point = {
                "start": iso(start), "ts": start, "count": count,
                "mean_us": _avg(r["sum_us"], count) if r else None,
                "max_us": _num(r["max_us"]) if r else None,
                "sketched_count": r["sketched_count"] if r else 0,
            }
            for name, q in PERCENTILES:
                point[name] = sketch.quantile(pairs, q)
            points.append(point)
        return {
            "host": host, "device": device, "op": op or "all", **range_fields(frm, to, step, horizon, requested),
            **tier_fields(span, frm, to, lo, hi), "points": points,
        }

    @app.get("/healthz")
    def healthz():
        views = settings.views_dir
        return {"status": "ok", "views": {"batch": (views / BATCH_VIEW).exists(), "realtime": (views / REALTIME_VIEW).exists()}}

    alerts_api.register(app, settings, clock)
    dashboard.register(app, settings, clock)
    openapi.register(app, settings, clock)
    return app
