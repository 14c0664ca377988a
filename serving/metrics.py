"""Prometheus ``/metrics`` of the whole pipeline, through ``prometheus_client``.

Two kinds of metrics, in one registry per app:

- the API's own request latency (``healthmon_api_request_duration_seconds``,
  a histogram by endpoint and status), observed around every request, and its
  answer cache (``healthmon_api_cache_lookups_total`` by result: hit, miss, or
  wait for the thread computing the same part; ``healthmon_api_cache_size_bytes``)
  and its view switches (``healthmon_api_view_switch_seconds``: new view files
  noticed -> attached and prepared -> read by requests); all are this process's own (with ``api_processes`` > 1, of the process
  that answered the scrape);
- the pipeline's state, read at scrape time by a custom collector from what
  the other processes publish: collector counters (``state/collector-*.json``),
  batch build records (``state/batch_runs.jsonl``: outcomes, and durations as
  a summary), the speed layer's progress and the views' row counts and horizon.  Reading at scrape time keeps one
  source of truth: the numbers are the ones ``/api/v1/pipeline`` shows.

Names carry their units (``_seconds``, ``_total``), as Prometheus asks.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily

from healthmon.config import Settings
from healthmon.state import read_runs, read_states
from serving import queries

COLLECTOR_COUNTERS = (
    ("received", "healthmon_collector_received_total", "Datagrams received."),
    ("accepted", "healthmon_collector_accepted_total", "Datagrams accepted as messages."),
    ("landed_messages", "healthmon_collector_landed_messages_total", "Messages in segments published to the landing store."),
    ("landed_segments", "healthmon_collector_landed_segments_total", "Raw segments published to the landing store."),
    ("deadletter_messages", "healthmon_collector_deadletter_messages_total", "Rejected datagrams published as dead letters."),
    ("deadletter_segments", "healthmon_collector_deadletter_segments_total", "Dead-letter segments published to the landing store."),
    ("spooled_segments", "healthmon_collector_spooled_segments_total", "Segments that went to the local spool (store unreachable)."),
    ("shipped_segments", "healthmon_collector_shipped_segments_total", "Spooled segments shipped to the landing store."),
)
COLLECTOR_GAUGES = (
    ("pending_segments", "healthmon_collector_pending_segments", "Segments not yet in the landing store."),
    ("spool_segments", "healthmon_collector_spool_segments", "Segments in the local spool now."),
)


class PipelineCollector:
    """Reads the pipeline's published state at every scrape."""

    def __init__(self, settings: Settings, connection: Callable, clock: Callable[[], float]) -> None:
        self.settings = settings
        self.connection = connection
        self.clock = clock

    def collect(self):
        yield from self._collectors()
        yield from self._batch()
        yield from self._views()

    def _collectors(self):
        states = read_states(self.settings.state_dir, "collector-")
        families = {
            key: CounterMetricFamily(name.removesuffix("_total"), doc, labels=["collector"]) for key, name, doc in COLLECTOR_COUNTERS
        }
        gauges = {key: GaugeMetricFamily(name, doc, labels=["collector"]) for key, name, doc in COLLECTOR_GAUGES}
        rejected = CounterMetricFamily("healthmon_collector_rejected", "Datagrams rejected, by reason.", labels=["collector", "reason"])
        for state in states.values():
            collector = str(state.get("collector_id", "?"))
            for key, family in {**families, **gauges}.items():
                family.add_metric([collector], float(state.get(key, 0) or 0))
            for reason, count in (state.get("rejected_by_reason") or {}).items():
                rejected.add_metric([collector, reason], float(count))
        yield from families.values()
        yield rejected
        yield from gauges.values()

    def _batch(self):
        runs = read_runs(self.settings.state_dir, last=1_000_000)
        builds = CounterMetricFamily("healthmon_batch_builds", "Batch builds, by outcome.", labels=["status"])
        for status in ("ok", "error"):
            builds.add_metric([status], float(sum(1 for r in runs if r.get("status") == status)))
        yield builds
        durations = SummaryMetricFamily("healthmon_batch_build_duration_seconds", "Durations of the batch builds, by outcome.",
                                        labels=["status"])
        for status in ("ok", "error"):
            took = [float(r.get("duration_s", 0.0)) for r in runs if r.get("status") == status]
            durations.add_metric([status], count_value=len(took), sum_value=sum(took))
        yield durations
        last = GaugeMetricFamily("healthmon_batch_last_build_duration_seconds", "Duration of the newest batch build.")
        if runs:
            last.add_metric([], float(runs[0].get("duration_s", 0.0)))
        yield last

    def _views(self):
        con = self.connection()
        now = self.clock()
        horizon = GaugeMetricFamily("healthmon_batch_horizon_timestamp_seconds", "The batch view's horizon (0 before the first build).")
        horizon.add_metric([], float(queries.horizon(con)))
        yield horizon
        lag = GaugeMetricFamily("healthmon_speed_lag_seconds", "Seconds since the speed layer last committed a micro-batch.")
        progress = queries.speed_progress(con)
        if progress and progress.get("committed_at"):
            lag.add_metric([], max(0.0, now - float(progress["committed_at"])))
        yield lag
        rows = GaugeMetricFamily("healthmon_view_rows", "Rows of each view table.", labels=["view", "table"])
        for view, catalog in (("batch", "b"), ("realtime", "rt")):
            for table, count in queries.table_rows(con, catalog).items():
                rows.add_metric([view, table], float(count))
        yield rows


class CacheCollector:
    """The counters of the API's answer cache (``serving.queries.BatchCache``), read at every scrape."""

    def __init__(self, cache: queries.BatchCache) -> None:
        self.cache = cache

    def collect(self):
        cache = self.cache
        lookups = CounterMetricFamily("healthmon_api_cache_lookups", "Lookups of cached answer parts, by result: hit, miss "
                                      "(computed by the asking thread), wait (for the thread computing the same part).",
                                      labels=["result"])
        for result, count in (("hit", cache.hits), ("miss", cache.misses), ("wait", cache.waits)):
            lookups.add_metric([result], float(count))
        yield lookups
        yield GaugeMetricFamily("healthmon_api_cache_size_bytes", "Bytes of answer parts the cache holds (estimated).",
                                value=float(cache.size_bytes))
        yield GaugeMetricFamily("healthmon_api_cache_capacity_bytes", "Most bytes the cache holds.", value=float(cache.max_bytes))


def make_registry(settings: Settings, connection: Callable, clock: Callable[[], float] = time.time,
                  cache: queries.BatchCache | None = None) -> tuple[CollectorRegistry, Histogram, Histogram]:
    """A registry with the pipeline collector, the cache's counters and the API's histograms (returned to observe into):
    request latency, and view switches (``ViewReader.follow``)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PipelineCollector(settings, connection, clock))
    if cache is not None:
        registry.register(CacheCollector(cache))
    requests = Histogram(
        "healthmon_api_request_duration_seconds", "API request latency.", ["endpoint", "status"], registry=registry,
        buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
    )
    switches = Histogram(
        "healthmon_api_view_switch_seconds", "Seconds from noticing newly published view files to requests reading them "
        "(attach, and the answers' parts requests asked for lately computed for them).",
        buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0), registry=registry,
    )
    return registry, requests, switches
