"""Webhook delivery: every alert transition, once, to every receiver, with retries.

The evaluation writes one outbox row per transition and receiver in the same
transaction as the transition (``alerting.store``), holding the exact body to
send; this module's ``Notifier`` (a thread of the scheduler process) POSTs
the due rows and marks them delivered.

One delivery round is one ``requests`` call whose ``urllib3`` ``Retry`` does
the retrying: up to ``alert_webhook_retries`` more attempts after connection
errors, a connection closed without an answer, timeouts
(``alert_webhook_timeout_s`` each) and HTTP 429/500/502/503/504, with
exponential backoff (the first retry at once, then
``alert_webhook_backoff_s``, then doubling).  Any 2xx answer is success;
redirects and other answers are failures.  A round that fails leaves the row
in the outbox with its attempt count and last error, and it is tried again
``REDELIVERY_FIRST_S`` later, then doubling up to ``REDELIVERY_MAX_S``,
until it is delivered or pruned with its alert.  Rows go out in the order
they were written; after a failure the receiver's later rows wait for the
next round, so a receiver gets one alert's transitions in order.

At-least-once, deduplicable: each POST carries ``Idempotency-Key: <alert
id>:<transition seq>`` (also in the body as ``healthmon.idempotency_key``);
a retry after an ambiguous failure (the receiver got it but the answer was
lost) repeats the key, so a receiver can drop the duplicate.

The body is Alertmanager's webhook format (version 4) with one alert, plus a
``healthmon`` object (``webhook_payload``); ``status`` is the state entered:
``pending``, ``firing`` or ``resolved``.  The notifier never raises into the
scheduler: errors are logged and it goes on.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable

import orjson
import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import MaxRetryError
from urllib3.util.retry import Retry

from alerting.store import AlertStore
from healthmon.config import Settings
from serving.params import iso

log = logging.getLogger(__name__)

RETRY_STATUSES = (429, 500, 502, 503, 504)
"""Answers after which an attempt is retried at once (within the round)."""

REDELIVERY_FIRST_S = 10.0
"""A failed round is tried again this long after it, then twice as long each time ..."""

REDELIVERY_MAX_S = 600.0
"""... but never more than this long after the previous round."""

POLL_S = 1.0
"""The notifier looks for due rows at least this often (it is also woken after every evaluation that queued some)."""

ZERO_TIME = "0001-01-01T00:00:00Z"
"""Alertmanager's endsAt of an alert that has not ended."""

USER_AGENT = "healthmon-alerts/1"


def fingerprint(labels: dict[str, str]) -> str:
    """16 hex digits identifying a label set (the same labels, the same fingerprint)."""
    return hashlib.sha256(orjson.dumps(labels, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def idempotency_key(alert_id: int, seq: int) -> str:
    return f"{alert_id}:{seq}"


def webhook_payload(alert: dict, seq: int, state: str, at: float, value: float | None, receiver: str) -> dict:
    """The JSON body announcing that ``alert`` entered ``state`` at ``at`` (transition ``seq``), for ``receiver``."""
    fired_at = alert.get("fired_at")
    starts_at = fired_at if fired_at is not None else alert["started_at"]
    annotations = {"summary": alert["summary"]}
    return {
        "version": "4",
        "groupKey": f"{receiver}:{alert['fingerprint']}",
        "truncatedAlerts": 0,
        "status": state,
        "receiver": receiver,
        "groupLabels": {"alertname": alert["rule"]},
        "commonLabels": alert["labels"],
        "commonAnnotations": annotations,
        "externalURL": "",
        "alerts": [{
            "status": state,
            "labels": alert["labels"],
            "annotations": annotations,
            "startsAt": iso(starts_at),
            "endsAt": iso(at) if state == "resolved" else ZERO_TIME,
            "generatorURL": "",
            "fingerprint": alert["fingerprint"],
        }],
        "healthmon": {
            "idempotency_key": idempotency_key(alert["id"], seq),
            "alert_id": alert["id"], "seq": seq, "state": state, "at": iso(at), "at_ts": at,
            "rule": alert["rule"], "subject": alert["subject"], "severity": alert["severity"],
            "value": value, "threshold": alert["threshold"],
            "started_at_ts": alert["started_at"], "fired_at_ts": fired_at,
        },
    }


def make_session(settings: Settings) -> requests.Session:
    """A session whose POSTs retry with exponential backoff (urllib3 ``Retry``)."""
    retry = Retry(
        total=settings.alert_webhook_retries,
        allowed_methods=None,  # POST too: the idempotency key makes a repeated delivery harmless
        status_forcelist=RETRY_STATUSES,
        # urllib3 sleeps backoff_factor * 2**(n-1) before the n-th consecutive retry (none before the first).
        backoff_factor=settings.alert_webhook_backoff_s / 2,
        raise_on_status=False,
        respect_retry_after_header=False,  # a receiver's Retry-After must not stall every other delivery
    )
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers.update({"User-Agent": USER_AGENT, "Content-Type": "application/json"})
    return session


class Notifier:
    """Delivers the due outbox rows; ``start()`` runs it in a thread until ``stop()``.

    ``deliver_due(now)`` is one pass (tests call it directly with an injected ``now``).
    """

    def __init__(self, store: AlertStore, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock
        self.session = make_session(settings)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def post(self, url: str, key: str, payload: bytes) -> tuple[int, str | None]:
        """One delivery round: ``(HTTP attempts made, None)`` on success, ``(attempts, error)`` otherwise."""
        retries = self.settings.alert_webhook_retries
        try:
            resp = self.session.post(url, data=payload, headers={"Idempotency-Key": key},
                                     timeout=self.settings.alert_webhook_timeout_s, allow_redirects=False)
        except requests.RequestException as exc:
            exhausted = bool(exc.args) and isinstance(exc.args[0], MaxRetryError)
            reason = exc.args[0].reason if exhausted else exc
            return (retries + 1 if exhausted else 1), f"{type(exc).__name__}: {reason}"
        history = getattr(resp.raw, "retries", None)
        attempts = 1 + (len(history.history) if history is not None else 0)
        resp.close()
        if 200 <= resp.status_code < 300:
            return attempts, None
        return attempts, f"HTTP {resp.status_code} {resp.reason}"

    def deliver_due(self, now: float | None = None) -> int:
        """Try every due outbox row once; returns how many were delivered."""
        now = self.clock() if now is None else now
        delivered = 0
        waiting: set[tuple[str, str]] = set()  # receivers whose oldest undelivered row is not due or just failed
        for row in self.store.undelivered():
            if self._stop.is_set():
                break
            receiver = (row["receiver"], row["url"])
            if receiver in waiting:
                continue  # keep this receiver's transitions in order: behind its older row
            if row["next_attempt_at"] > now:
                waiting.add(receiver)
                continue
            attempts, error = self.post(row["url"], row["idempotency_key"], row["payload"])
            if error is None:
                self.store.mark_delivered(row["id"], now, attempts)
                delivered += 1
                continue
            waiting.add(receiver)
            delay = min(REDELIVERY_MAX_S, REDELIVERY_FIRST_S * 2 ** row["rounds"])
            self.store.mark_failed(row["id"], attempts, error, now + delay)
            log.warning(
                "webhook %s: delivery %s failed after %d attempts (%d in all): %s; next round in %.0f s",
                row["receiver"], row["idempotency_key"], attempts, row["attempts"] + attempts, error, delay,
            )
        return delivered

    # ------------------------------------------------------------ the thread

    def wake(self) -> None:
        """Look for due rows now (after an evaluation queued some)."""
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="alert-notifier", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> bool:
        """Stop after the delivery in flight, waiting at most ``timeout``; False if it is still running then.

        A delivery abandoned that way stays in the outbox and goes out again at
        the next start (with the same idempotency key).
        """
        self._stop.set()
        self._wake.set()
        if self._thread is None:
            self.session.close()
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._wake.clear()
                try:
                    self.deliver_due()
                except Exception:
                    log.exception("alert notifier: a delivery pass failed (it will be tried again)")
                self._wake.wait(POLL_S)
        finally:
            self.session.close()
