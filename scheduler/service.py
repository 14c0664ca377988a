"""``healthmon schedule``: the APScheduler process of the batch layer and of the alerts.

Jobs (``--jobs all``, the default, runs both groups; ``--jobs batch`` or
``--jobs alerts`` one of them):

- ``alerts``: the alert rules are loaded first (a bad rules file stops the
  process at once with a message naming the file, rule and field); then
  ``alerting.engine.AlertEvaluator.evaluate`` runs every
  ``alert_eval_interval_s`` from the start, and a notifier thread delivers
  the webhooks.  Alerts need no Spark: they start before the Spark session,
  which takes several seconds, and never wait for a batch build.
- ``batch``: one SparkSession for the process's whole life (a cold one costs
  7-11 s); ``batch_jobs.build.build_and_record`` at start and then every
  ``batch_interval_s``, each followed by the expiry of real-time rows below
  the new horizon, each outcome recorded in
  ``<data_dir>/state/batch_runs.jsonl`` and shown by ``/api/v1/pipeline``;
  and retention (``batch_jobs.retention``) every ``retention_interval_s``.

Every job runs at most once at a time (``max_instances=1``; missed runs are
coalesced).  SIGTERM/SIGINT cancel a running build (it publishes nothing;
the next run builds again), let a running evaluation finish, stop the
notifier (after the delivery in flight), then stop.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from datetime import UTC, datetime

from apscheduler.schedulers.background import BackgroundScheduler

from healthmon.config import Settings

log = logging.getLogger(__name__)

JOB_GROUPS = ("all", "batch", "alerts")
"""Values of ``healthmon schedule --jobs``."""


def add_batch_jobs(scheduler: BackgroundScheduler, settings: Settings, spark) -> None:
    """The batch build (at once, then every batch_interval_s) and retention."""
    from batch_jobs.build import build_and_record
    from batch_jobs.retention import apply_retention
    from healthmon.landing import landing_for

    store = landing_for(settings)

    def batch_build() -> None:
        record = build_and_record(spark, settings, store)
        log.info(
            "batch build %s: %s in %.1f s (horizon %s, %s hours rebuilt)",
            record.get("build_id"), record["status"], record["duration_s"], record.get("horizon"), record.get("hours_rebuilt"),
        )

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


def add_alert_jobs(scheduler: BackgroundScheduler, settings: Settings, alerts) -> None:
    """The evaluation of the alert rules, at once and then every alert_eval_interval_s."""

    def evaluate() -> None:
        try:
            alerts.evaluate()
        except Exception:  # a failed evaluation must not stop the next ones
            log.exception("alert evaluation failed")

    scheduler.add_job(
        evaluate,
        "interval",
        seconds=settings.alert_eval_interval_s,
        id="alert_eval",
        max_instances=1,
        coalesce=True,
        next_run_time=datetime.now(UTC),
    )


def run(settings: Settings, jobs: str = "all") -> int:
    """Run the scheduler until SIGTERM/SIGINT; 0 on a clean stop, 2 when the alert rules file is bad."""
    # APScheduler logs two lines per run of every job: too many with an evaluation every few seconds.
    # Each job logs its own outcome; failures are still logged (at ERROR).
    logging.getLogger("apscheduler.executors.default").setLevel(logging.WARNING)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    alerts = None
    if jobs in ("all", "alerts"):
        from alerting.engine import AlertEvaluator
        from alerting.rules import RulesError

        try:
            alerts = AlertEvaluator(settings)
        except RulesError as exc:
            print(f"healthmon schedule: {exc}", file=sys.stderr)
            return 2
    scheduler = BackgroundScheduler(timezone=UTC)
    spark = None
    try:
        if alerts is not None:
            alerts.start()
            add_alert_jobs(scheduler, settings, alerts)
            log.info("scheduler: alert rules from %s evaluated every %ss", settings.alert_rules_path, settings.alert_eval_interval_s)
        scheduler.start()
        if jobs in ("all", "batch") and not stop.is_set():
            from healthmon.spark import StartAborted, spark_session, stop_aborts_start

            try:
                with stop_aborts_start(stop):
                    spark = spark_session(settings, "healthmon-scheduler")
            except StartAborted:
                log.info("scheduler: stopped while Spark was starting")
            if not stop.is_set():
                add_batch_jobs(scheduler, settings, spark)
                log.info("scheduler: batch build every %ss", settings.batch_interval_s)
        stop.wait()
    finally:
        log.info("scheduler: stopping (waiting for running jobs; a running batch build is cancelled)")
        if scheduler.running:
            scheduler.pause()  # no new run starts
        if spark is not None:
            # A build can take minutes, and a stop must take seconds: stopping Spark fails the build's next Spark call, so
            # it publishes nothing (the previous view stays served) and is recorded as failed; the next run builds again.
            spark.stop()
        if scheduler.running:
            scheduler.shutdown(wait=True)
        if alerts is not None:
            alerts.close()
    return 0
