"""Evaluation of the alert rules on the merged views, and the state machine of each alert.

Every ``alert_eval_interval_s`` the scheduler calls ``AlertEvaluator.evaluate``
(``now`` is a parameter: tests inject it).  For each rule it observes every
subject at ``now`` (``observe``):

- ``metric``: per service matching the rule's ``services`` glob, the average
  of the metric over the windows that start in ``[now - over, now)`` (the same
  merged summary as ``GET /api/v1/summary``; ``disk_free_pct`` is ``100 -``
  the average ``disk_used_pct``).  The condition is ``value <op> threshold``.
  A service with no message in that period has no value: its alert resolves
  (silence is the liveness rules' business);
- ``liveness``: ``serving.liveness.service_statuses``/``host_statuses`` at
  ``now``; holds when the status is the rule's status or worse; the value is
  ``silent_s``, the threshold ``stale_after_s``/``missing_after_s``;
- ``drive``: ``serving.disk_health.drive_health`` at ``now`` (exactly what
  ``GET /api/v1/disks/health`` answers), one subject per host/device/op; holds
  when the verdict is the rule's status or worse; the value is the score (the
  p99 ratio), the threshold ``disk_warn_ratio``/``disk_degraded_ratio``.

Then, per (rule, subject), in one transaction of the store:

- condition true and no active alert: a new alert (new id), ``pending`` since
  now; if it has held for the rule's ``for`` (at once for ``for: 0s``), it
  moves on to ``firing`` in the same evaluation (both transitions recorded);
- ``pending`` and the condition has held for ``for`` since the alert started: ``firing``;
- ``pending`` or ``firing`` and the condition is false (or the subject is no
  longer seen, or its rule was removed from the file): ``resolved``.  A
  pending alert that clears is resolved without ever having fired
  (``fired_at`` stays null); a flapping condition thus never fires, as with
  Prometheus's ``for``;
- still true: the latest value, threshold and summary are kept, no transition.

Every transition is queued in the outbox for every receiver in the same
transaction (``alerting.notify`` delivers it).  A rule whose observation
fails (a view cannot be read) is skipped for this evaluation and its alerts
are left as they are: a read error never resolves anything.  Resolved alerts
older than ``alert_history_days`` are pruned after each evaluation.
"""

from __future__ import annotations

import logging
import math
import operator
import time
from collections.abc import Callable
from dataclasses import dataclass

import duckdb
import orjson

from alerting.notify import Notifier, fingerprint, idempotency_key, webhook_payload
from alerting.rules import DRIVE_STATUSES, LIVENESS_STATUSES, Rule, RuleSet, RulesWatcher, render
from alerting.store import AlertStore
from healthmon.config import Settings
from healthmon.views import ViewReader
from serving import liveness, queries
from serving.disk_health import drive_health

log = logging.getLogger(__name__)

OPS: dict[str, Callable[[float, float], bool]] = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}


@dataclass(frozen=True)
class Observation:
    """One subject of a rule at one instant: whether the condition holds, the value and the summary's fields."""

    subject: str
    holds: bool
    value: float | None
    threshold: float | None
    labels: dict[str, str]
    fields: dict


class Observer:
    """Observes rules at one ``now``, reading each kind's data once per evaluation."""

    def __init__(self, con: duckdb.DuckDBPyConnection, now: float, settings: Settings) -> None:
        self.con = con
        self.now = now
        self.settings = settings
        self._cache: dict = {}

    def _once(self, key, compute: Callable[[], object]):
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    def observe(self, rule: Rule) -> dict[str, Observation]:
        """Every subject of ``rule`` at ``now``, by subject."""
        observations = {"metric": self._metric, "liveness": self._liveness, "drive": self._drive}[rule.kind](rule)
        return {o.subject: o for o in observations}

    def _metric(self, rule: Rule) -> list[Observation]:
        lo, hi = math.ceil(self.now - rule.over_s), math.ceil(self.now)

        def summary():
            return queries.summary(self.con, lo, hi, queries.horizon(self.con))

        out = []
        for row in self._once(("summary", lo, hi), summary):
            service = row["service"]
            if not rule.matches(service, rule.services):
                continue
            column = "disk_used_pct" if rule.metric == "disk_free_pct" else rule.metric
            total = row[f"{column}_sum"]
            if total is None or not row["count"]:
                continue
            value = total / row["count"]
            if rule.metric == "disk_free_pct":
                value = 100.0 - value
            out.append(Observation(
                subject=service, holds=OPS[rule.op](value, rule.threshold), value=value, threshold=rule.threshold,
                labels={"service": service}, fields={"service": service, "metric": rule.metric, "op": rule.op},
            ))
        return out

    def _liveness(self, rule: Rule) -> list[Observation]:
        if rule.target == "services":
            rows = self._once("services", lambda: liveness.service_statuses(self.con, self.now, self.settings))
            name_field, glob = "service", rule.services
        else:
            rows = self._once("hosts", lambda: liveness.host_statuses(self.con, self.now, self.settings))
            name_field, glob = "host", rule.hosts
        wanted = LIVENESS_STATUSES.index(rule.status)
        threshold_field = "stale_after_s" if rule.status == "stale" else "missing_after_s"
        out = []
        for row in rows:
            name = row[name_field]
            if not rule.matches(name, glob):
                continue
            status = row["status"]
            holds = status in LIVENESS_STATUSES and LIVENESS_STATUSES.index(status) >= wanted
            labels = {name_field: name}
            if name_field == "service" and row.get("host"):
                labels["host"] = row["host"]
            out.append(Observation(
                subject=name, holds=holds, value=row["silent_s"], threshold=row[threshold_field], labels=labels,
                fields={name_field: name, "status": status, "expected_interval_s": row["expected_interval_s"]},
            ))
        return out

    def _drive(self, rule: Rule) -> list[Observation]:
        report = self._once("drives", lambda: drive_health(self.con, self.now, self.settings))
        wanted = DRIVE_STATUSES.index(rule.status)
        threshold = self.settings.disk_warn_ratio if rule.status == "warn" else self.settings.disk_degraded_ratio
        out = []
        for d in report["devices"]:
            if not rule.matches(d["host"], rule.hosts):
                continue
            holds = d["status"] in DRIVE_STATUSES and DRIVE_STATUSES.index(d["status"]) >= wanted
            out.append(Observation(
                subject=f"{d['host']}/{d['device']}/{d['op']}", holds=holds, value=d["score"], threshold=threshold,
                labels={"host": d["host"], "device": d["device"], "op": d["op"]},
                fields={"host": d["host"], "device": d["device"], "op": d["op"], "status": d["status"], "reason": d["reason"]},
            ))
        return out


def _summary(rule: Rule, obs: Observation) -> str:
    fields = {"rule": rule.name, "subject": obs.subject, "severity": rule.severity, "value": obs.value,
              "threshold": obs.threshold, **obs.fields}
    try:
        return render(rule.summary, fields)
    except (ValueError, TypeError, KeyError, IndexError) as exc:  # checked at load; a value of an unexpected type
        log.warning("alert rule %s: summary template failed for %s: %s", rule.name, obs.subject, exc)
        return f"{rule.name} {obs.subject}: {obs.value}"


@dataclass
class Outcome:
    """What one evaluation did."""

    transitions: list[tuple[int, str, str, str]]  # (alert id, rule, subject, state entered)
    queued: int  # outbox rows written
    skipped_rules: list[str]  # rules whose observation failed
    pruned: int


def evaluate(store: AlertStore, ruleset: RuleSet, con: duckdb.DuckDBPyConnection, now: float, settings: Settings) -> Outcome:
    """Observe every rule at ``now`` and move the alerts along; one transaction of ``store``."""
    observer = Observer(con, now, settings)
    observed: dict[str, dict[str, Observation]] = {}
    skipped = []
    for rule in ruleset.rules:
        try:
            observed[rule.name] = observer.observe(rule)
        except Exception:
            log.exception("alert rule %s: cannot evaluate it now; its alerts stay as they are", rule.name)
            skipped.append(rule.name)
    outcome = Outcome(transitions=[], queued=0, skipped_rules=skipped, pruned=0)

    def transition(alert: dict, state: str, value: float | None) -> None:
        seq = store.add_transition(alert["id"], state, now, value)
        alert = store.alert(alert["id"])
        for receiver in ruleset.receivers:
            payload = webhook_payload(alert, seq, state, now, value, receiver.name)
            store.queue(alert["id"], seq, receiver.name, receiver.url, idempotency_key(alert["id"], seq),
                        orjson.dumps(payload), now)
            outcome.queued += 1
        outcome.transitions.append((alert["id"], alert["rule"], alert["subject"], state))

    with store.transaction():
        active = store.active_alerts()
        for rule in ruleset.rules:
            for subject, obs in observed.get(rule.name, {}).items():
                alert = active.pop((rule.name, subject), None)
                if not obs.holds:
                    if alert is not None:
                        transition(alert, "resolved", obs.value)
                    continue
                summary = _summary(rule, obs)
                if alert is None:
                    labels = {"alertname": rule.name, "severity": rule.severity, **obs.labels, **rule.labels}
                    alert_id = store.open_alert(
                        rule=rule.name, subject=subject, kind=rule.kind, severity=rule.severity, labels=labels,
                        fingerprint=fingerprint(labels), summary=summary, value=obs.value, threshold=obs.threshold, now=now,
                    )
                    alert = {"id": alert_id, "state": "pending", "started_at": now}
                    transition(alert, "pending", obs.value)
                else:
                    store.update_alert(alert["id"], value=obs.value, threshold=obs.threshold, summary=summary, now=now)
                if alert["state"] == "pending" and now - alert["started_at"] >= rule.for_s:
                    transition(alert, "firing", obs.value)
        for (rule_name, _subject), alert in active.items():
            if rule_name not in skipped:  # no longer seen, or its rule is gone
                transition(alert, "resolved", None)
        outcome.pruned = store.prune(now - settings.alert_history_days * 86400)
    return outcome


class AlertEvaluator:
    """The scheduler's alerting: rules (reloaded when the file changes), the views, the store and the notifier.

    Construction loads the rules file: a bad file raises ``alerting.rules.RulesError``.
    """

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.clock = clock
        self.rules = RulesWatcher(settings.alert_rules_path, settings)
        self.reader = ViewReader(settings.views_dir)
        self.store = AlertStore(settings.alerts_db)
        self.notifier = Notifier(AlertStore(settings.alerts_db), settings, clock)

    def evaluate(self, now: float | None = None) -> Outcome:
        now = self.clock() if now is None else now
        outcome = evaluate(self.store, self.rules.current(), self.reader.connection(), now, self.settings)
        for alert_id, rule, subject, state in outcome.transitions:
            log.info("alert %s %s %s: %s", alert_id, rule, subject, state)
        if outcome.queued:
            self.notifier.wake()
        return outcome

    def start(self) -> None:
        """Start delivering webhooks (in a thread)."""
        self.notifier.start()

    def close(self) -> None:
        """Stop the notifier (after the delivery in flight, at most one attempt's timeout) and close everything."""
        stopped = self.notifier.stop(timeout=self.settings.alert_webhook_timeout_s + 1)
        self.reader.close_all()
        self.store.close()
        if stopped:  # else the thread still uses its store; the process exit closes it
            self.notifier.store.close()
        else:
            log.warning("alert notifier: a webhook delivery is still in flight; it will be sent again at the next start")
