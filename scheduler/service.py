"""``healthmon schedule``: the APScheduler process of the batch layer.

It keeps one SparkSession for its whole life (a cold one costs 7-11 s) and
runs ``batch_jobs.build.build_and_record`` at start and then every
``batch_interval_s``: never two at once (``max_instances=1``; missed runs are
coalesced), each followed by the expiry of real-time rows below the new
horizon, each outcome recorded in ``<data_dir>/state/batch_runs.jsonl`` and
shown by ``/api/v1/pipeline``; and retention (``batch_jobs.retention``)
every ``retention_interval_s``.  SIGTERM/SIGINT let a running build finish,
then stop.
"""

from __future__ import annotations

import logging
import signal
import threading
from datetime import UTC, datetime

from apscheduler.schedulers.background import BackgroundScheduler

from batch_jobs.build import build_and_record
from batch_jobs.retention import apply_retention
from healthmon.config import Settings
from healthmon.landing import landing_for

log = logging.getLogger(__name__)


def make_scheduler(settings: Settings, spark) -> BackgroundScheduler:
    """A scheduler with the batch build job registered (not started)."""
    store = landing_for(settings)

    def batch_build() -> None:
        record = build_and_record(spark, settings, store)
        log.info(
            "batch build %s: %s in %.1f s (horizon %s, %s hours rebuilt)",
            record.get("build_id"), record["status"], record["duration_s"], record.get("horizon"), record.get("hours_rebuilt"),
        )

    scheduler = BackgroundScheduler(timezone=UTC)
    scheduler.add_job(
        batch_build,
        "interval",
        seconds=settings.batch_interval_s,
        id="batch_build",
        max_instances=1,
        coalesce=True,
        next_run_time=datetime.now(UTC),
    )
    scheduler.add_job(
        apply_retention,
        "interval",
        args=(settings, store),
        seconds=settings.retention_interval_s,
        id="retention",
        max_instances=1,
        coalesce=True,
    )
    return scheduler


def run(settings: Settings) -> int:
    from healthmon.spark import spark_session

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    spark = spark_session(settings, "healthmon-scheduler")
    scheduler = make_scheduler(settings, spark)
    scheduler.start()
    log.info("scheduler: batch build every %ss", settings.batch_interval_s)
    try:
        stop.wait()
    finally:
        log.info("scheduler: stopping (waiting for a running build)")
        scheduler.shutdown(wait=True)
        spark.stop()
    return 0
