"""``GET /api/v1/alerts`` and ``GET /api/v1/rules``: the alert store and the rules in force, read-only.

- ``GET /api/v1/alerts?state=active|all`` -> ``{"now", "now_ts", "alerts": [{"id",
  "rule", "subject", "severity", "state", "labels", "summary", "value",
  "threshold", "started_at", "started_at_ts", "fired_at", "fired_at_ts",
  "resolved_at", "resolved_at_ts", "transitions": [{"state", "at", "at_ts",
  "value"}]}]}``.  ``active`` (the default) is pending and firing alerts;
  ``all`` adds those resolved within ``alert_history_days`` of now.  Sorted
  firing first, then pending, then resolved; within a state, the alert that
  entered it last first.  ``value`` is the latest observed value (of an active
  alert) or the one at resolution (null when the subject was no longer seen).
  No alert store yet (the scheduler has never run): an empty list.
- ``GET /api/v1/rules`` -> ``{"file", "rules": [{"name", "kind", "severity",
  "for_s", "labels", "summary", ...the fields of its kind}], "receivers":
  [{"name", "url"}]}``: the rules file as the scheduler reads it (reloaded
  here too when it changes; a bad edit keeps the previous rules, as in the
  scheduler).  A password in a receiver's URL is shown as ``***``.

The store is opened read-only for each request and closed when the request
ends (``g`` and ``teardown_appcontext``, as in Flask's tutorial), so the API
never holds it open between requests nor blocks the scheduler.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable

from flask import Flask, g, request

from alerting import store as alert_store
from alerting.rules import RulesError, RulesWatcher
from healthmon.config import Settings
from serving.errors import ApiError, bad_parameter
from serving.params import check_known, iso

API = "/api/v1"
ALERT_STATES = ("active", "all")

log = logging.getLogger("healthmon.serving")


def _alert_json(alert: dict) -> dict:
    out = {key: alert[key] for key in ("id", "rule", "subject", "severity", "state", "labels", "summary", "value", "threshold")}
    for name in ("started_at", "fired_at", "resolved_at"):
        out[name] = iso(alert[name])
        out[f"{name}_ts"] = alert[name]
    out["transitions"] = [{"state": t["state"], "at": iso(t["at"]), "at_ts": t["at"], "value": t["value"]} for t in alert["transitions"]]
    return out


def register(app: Flask, settings: Settings, clock: Callable[[], float]) -> None:
    """Add this module's routes to the API app."""
    rules_lock = threading.Lock()
    watcher: list[RulesWatcher] = []  # created on first use, then reloaded when the file changes

    def alerts_db() -> sqlite3.Connection | None:
        if "alerts_db" not in g:
            g.alerts_db = alert_store.connect_readonly(settings.alerts_db)
        return g.alerts_db

    @app.teardown_appcontext
    def close_alerts_db(_exc: BaseException | None) -> None:
        con = g.pop("alerts_db", None)
        if con is not None:
            con.close()

    @app.get(f"{API}/alerts")
    def alerts():
        check_known(request.args, ("state",))
        state = request.args.get("state", "active")
        if state not in ALERT_STATES:
            raise bad_parameter(f"state={state[:20]!r}: must be one of {', '.join(ALERT_STATES)}")
        now = clock()
        con = alerts_db()
        since = now - settings.alert_history_days * 86400 if state == "all" else None
        rows = alert_store.list_alerts(con, since) if con is not None else []
        return {"now": iso(now), "now_ts": now, "alerts": [_alert_json(a) for a in rows]}

    @app.get(f"{API}/rules")
    def rules():
        check_known(request.args, ())
        with rules_lock:
            try:
                if not watcher:
                    watcher.append(RulesWatcher(settings.alert_rules_path, settings))
                ruleset = watcher[0].current()
            except RulesError as exc:
                log.error("%s", exc)
                raise ApiError(500, "internal_error", str(exc)) from None
        return ruleset.as_dict()
