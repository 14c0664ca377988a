"""Webhook delivery to a real local HTTP receiver, and ``healthmon schedule --jobs alerts`` as a real process.

The receiver is an ``http.server`` in a thread that answers each path by a
script (500, 503, hang up without answering, take the request and then hang
up, ...) before it accepts: every transition must reach every receiver, in
order, once (a retry after an ambiguous failure repeats its idempotency key),
and failures must stay in the outbox with their attempt count.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import orjson
import pytest

from alerting.engine import AlertEvaluator
from alerting.notify import ZERO_TIME, Notifier
from alerting.store import AlertStore
from healthmon.config import load_settings
from serving.app import create_app
from serving.params import iso
from tests.procs import HEALTHMON, free_port, healthmon_env, start_healthmon, stop_process, wait_until
from tests.test_merge_rule import message, publish_realtime

T0 = 1704067200  # 2024-01-01T00:00:00Z


class Receiver:
    """A real HTTP server on 127.0.0.1; each path answers by its script, then 200.

    Script steps: ``"500"``/``"503"`` (that status), ``"close"`` (hang up
    without answering), ``"take-and-close"`` (count the request as received,
    then hang up: the sender cannot know it arrived).
    """

    def __init__(self, scripts: dict[str, list[str]] | None = None) -> None:
        self.scripts = {path: deque(steps) for path, steps in (scripts or {}).items()}
        self.seen: list[tuple[str, str, dict]] = []  # every request that arrived: (path, Idempotency-Key, body)
        self.accepted: list[tuple[str, str, dict]] = []  # answered 2xx, or taken before hanging up
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = orjson.loads(self.rfile.read(int(self.headers["Content-Length"])))
                entry = (self.path, self.headers["Idempotency-Key"], body)
                with receiver.lock:
                    receiver.seen.append(entry)
                    script = receiver.scripts.get(self.path)
                    step = script.popleft() if script else "ok"
                    if step in ("ok", "take-and-close"):
                        receiver.accepted.append(entry)
                if step in ("close", "take-and-close"):
                    self.close_connection = True
                    return
                status = 200 if step == "ok" else int(step)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def keys(self, path: str, accepted: bool = True) -> list[str]:
        with self.lock:
            return [key for p, key, _ in (self.accepted if accepted else self.seen) if p == path]

    def bodies(self, path: str) -> list[dict]:
        with self.lock:
            return [body for p, _, body in self.accepted if p == path]


def rules_text(receivers: dict[str, str], rule: str = "{name: Hot, kind: metric, metric: cpu_pct, op: '>', threshold: 90}") -> str:
    lines = ["receivers:"] + [f"  - {{name: {name}, url: '{url}'}}" for name, url in receivers.items()]
    return "\n".join([*lines, "rules:", f"  - {rule}", ""])


def settings_for(data_dir: Path, text: str, **overrides):
    (Path(data_dir) / "rules.yaml").write_text(text)
    return load_settings({"data_dir": str(data_dir), "alert_rules_file": str(Path(data_dir) / "rules.yaml"), **overrides}, environ={})


def three_transitions(settings) -> None:
    """Alert 1 (rule Hot on service s): pending and firing at T0 + 120, resolved at T0 + 600 (no data any more)."""
    publish_realtime(settings.views_dir, [message("s", T0 + i, 95.0) for i in range(0, 120, 10)], 0)
    evaluator = AlertEvaluator(settings)
    try:
        evaluator.evaluate(T0 + 120)
        evaluator.evaluate(T0 + 600)
    finally:
        evaluator.close()


def test_each_transition_reaches_each_receiver_once_through_failures(tmp_path):
    with Receiver({"/a": ["500", "500", "close"], "/b": ["close"], "/c": ["take-and-close"]}) as receiver:
        urls = {name: f"{receiver.url}/{name}" for name in ("a", "b", "c")}
        settings = settings_for(tmp_path, rules_text(urls), alert_webhook_retries=5, alert_webhook_backoff_s=0.01,
                                alert_webhook_timeout_s=5)
        three_transitions(settings)
        store = AlertStore(settings.alerts_db)
        notifier = Notifier(store, settings)
        try:
            assert notifier.deliver_due(T0 + 600) == 9
            assert notifier.deliver_due(T0 + 3600) == 0  # nothing twice
            outbox = store.outbox()
        finally:
            notifier.stop()
            store.close()
        keys = ["1:1", "1:2", "1:3"]
        for path in ("/a", "/b", "/c"):
            assert receiver.keys(path, accepted=False)[-3:] == keys
        assert receiver.keys("/a") == keys and receiver.keys("/b") == keys
        assert receiver.keys("/a", accepted=False) == ["1:1"] * 4 + ["1:2", "1:3"]  # 500, 500, hang-up, 200
        assert receiver.keys("/b", accepted=False) == ["1:1"] * 2 + ["1:2", "1:3"]
        # The receiver got 1:1 and hung up before answering: the retry repeats the key, so it can drop the duplicate.
        assert receiver.keys("/c") == ["1:1", "1:1", "1:2", "1:3"] and list(dict.fromkeys(receiver.keys("/c"))) == keys
        c_bodies = receiver.bodies("/c")
        assert c_bodies[0] == c_bodies[1]
        bodies = receiver.bodies("/a")
    assert [(row["receiver"], row["idempotency_key"], row["attempts"], row["rounds"], row["delivered_at"], row["last_error"])
            for row in outbox] == [
        ("a", "1:1", 4, 1, T0 + 600, None), ("b", "1:1", 2, 1, T0 + 600, None), ("c", "1:1", 2, 1, T0 + 600, None),
        ("a", "1:2", 1, 1, T0 + 600, None), ("b", "1:2", 1, 1, T0 + 600, None), ("c", "1:2", 1, 1, T0 + 600, None),
        ("a", "1:3", 1, 1, T0 + 600, None), ("b", "1:3", 1, 1, T0 + 600, None), ("c", "1:3", 1, 1, T0 + 600, None),
    ]
    labels = {"alertname": "Hot", "severity": "warning", "service": "s"}
    pending, firing, resolved = bodies
    fingerprint = firing["alerts"][0]["fingerprint"]
    assert len(fingerprint) == 16 and pending["alerts"][0]["fingerprint"] == fingerprint
    assert firing == {
        "version": "4", "groupKey": f"a:{fingerprint}", "truncatedAlerts": 0, "status": "firing", "receiver": "a",
        "groupLabels": {"alertname": "Hot"}, "commonLabels": labels, "commonAnnotations": {"summary": "s: cpu_pct 95.0 > 90"},
        "externalURL": "",
        "alerts": [{"status": "firing", "labels": labels, "annotations": {"summary": "s: cpu_pct 95.0 > 90"},
                    "startsAt": "2024-01-01T00:02:00Z", "endsAt": ZERO_TIME, "generatorURL": "", "fingerprint": fingerprint}],
        "healthmon": {"idempotency_key": "1:2", "alert_id": 1, "seq": 2, "state": "firing", "at": "2024-01-01T00:02:00Z",
                      "at_ts": T0 + 120, "rule": "Hot", "subject": "s", "severity": "warning", "value": 95.0, "threshold": 90.0,
                      "started_at_ts": T0 + 120, "fired_at_ts": T0 + 120},
    }
    assert (pending["status"], pending["alerts"][0]["status"], pending["healthmon"]["fired_at_ts"]) == ("pending", "pending", None)
    assert resolved["status"] == "resolved" and resolved["alerts"][0]["endsAt"] == iso(T0 + 600)
    assert resolved["alerts"][0]["startsAt"] == iso(T0 + 120) and resolved["healthmon"]["value"] is None


def test_a_receiver_down_longer_than_the_retries_gets_its_transitions_later_in_order(tmp_path, caplog):
    dead = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    with Receiver({"/d": ["503"] * 4}) as receiver:
        settings = settings_for(tmp_path, rules_text({"d": f"{receiver.url}/d", "dead": dead}), alert_webhook_retries=1,
                                alert_webhook_backoff_s=0, alert_webhook_timeout_s=5)
        three_transitions(settings)
        store = AlertStore(settings.alerts_db)
        notifier = Notifier(store, settings)
        try:
            caplog.set_level(logging.WARNING, logger="alerting.notify")
            assert notifier.deliver_due(T0 + 600) == 0
            first = {(r["receiver"], r["seq"]): r for r in store.outbox()}
            assert receiver.keys("/d", accepted=False) == ["1:1", "1:1"]  # a try and one retry; 1:2 waits behind 1:1
            assert notifier.deliver_due(T0 + 605) == 0 and len(receiver.keys("/d", accepted=False)) == 2  # not due yet
            assert notifier.deliver_due(T0 + 610) == 0  # second round: 503 twice more
            assert notifier.deliver_due(T0 + 630) == 3  # 10 s, then 20 s later: the receiver is back, everything in order
            last = {(r["receiver"], r["seq"]): r for r in store.outbox()}
        finally:
            notifier.stop()
            store.close()
        assert receiver.keys("/d") == ["1:1", "1:2", "1:3"]
    assert (first["d", 1]["attempts"], first["d", 1]["rounds"], first["d", 1]["last_error"]) == (2, 1, "HTTP 503 Service Unavailable")
    assert first["d", 1]["next_attempt_at"] == T0 + 610 and first["d", 1]["delivered_at"] is None
    assert (first["d", 2]["attempts"], first["d", 2]["rounds"]) == (0, 0)
    assert (last["d", 1]["attempts"], last["d", 1]["rounds"], last["d", 1]["delivered_at"]) == (5, 3, T0 + 630)
    down = last["dead", 1]
    assert (down["attempts"], down["rounds"], down["delivered_at"]) == (6, 3, None)  # three rounds of two attempts
    assert down["last_error"].startswith("ConnectionError: ") and "Connection refused" in down["last_error"]
    assert down["next_attempt_at"] == T0 + 630 + 40
    assert (last["dead", 2]["attempts"], last["dead", 3]["attempts"]) == (0, 0)
    refused = down["last_error"]
    assert [r.getMessage() for r in caplog.records if r.name == "alerting.notify"] == [
        "webhook d: delivery 1:1 failed after 2 attempts (2 in all): HTTP 503 Service Unavailable; next round in 10 s",
        f"webhook dead: delivery 1:1 failed after 2 attempts (2 in all): {refused}; next round in 10 s",
        "webhook d: delivery 1:1 failed after 2 attempts (4 in all): HTTP 503 Service Unavailable; next round in 20 s",
        f"webhook dead: delivery 1:1 failed after 2 attempts (4 in all): {refused}; next round in 20 s",
        f"webhook dead: delivery 1:1 failed after 2 attempts (6 in all): {refused}; next round in 40 s",
    ]


# ---------------------------------------------------------------- healthmon schedule


def test_a_bad_rules_file_stops_healthmon_schedule_at_start(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - {name: Hot, kind: metric, metric: cpu_pct, op: '=>', threshold: 90}\n")
    env = {"HEALTHMON_DATA_DIR": str(tmp_path / "var"), "HEALTHMON_ALERT_RULES_FILE": str(rules)}
    done = subprocess.run([*HEALTHMON, "schedule"], env=healthmon_env(env), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert f"healthmon schedule: alert rules {rules}: rules[0] (Hot): op: '=>' is not one of >, >=, <, <=" in done.stderr
    assert "SparkSession" not in done.stderr  # stopped before any Spark


def test_healthmon_schedule_evaluates_and_delivers(tmp_path):
    """``healthmon schedule --jobs alerts`` (no Spark) on the wall clock: fires, resolves, survives a bad edit, stops cleanly."""
    with Receiver() as receiver:
        data_dir = tmp_path / "var"
        rules = tmp_path / "rules.yaml"
        rules.write_text(rules_text({"ops": f"{receiver.url}/hook"}, "{name: Hot, kind: metric, metric: cpu_pct, op: '>', threshold: 90}"))
        settings = load_settings({"data_dir": str(data_dir)}, environ={})

        published: list[list[dict]] = []  # kept alive: publish_realtime caches window rows by the list's id()

        def publish(cpu: float) -> None:
            now = time.time()
            published.append([message("s", now - 170 + i, cpu) for i in range(0, 770, 10)])
            publish_realtime(settings.views_dir, published[-1], 0)

        publish(95.0)
        env = {"HEALTHMON_DATA_DIR": str(data_dir), "HEALTHMON_ALERT_RULES_FILE": str(rules),
               "HEALTHMON_ALERT_EVAL_INTERVAL_S": "0.2", "HEALTHMON_ALERT_WEBHOOK_BACKOFF_S": "0.01"}
        proc = start_healthmon(["schedule", "--jobs", "alerts"], env)
        try:
            def delivered(*keys: str):
                def check() -> bool:
                    assert proc.poll() is None, Path(proc.log_path).read_text()
                    return receiver.keys("/hook") == list(keys)
                return check

            wait_until(delivered("1:1", "1:2"), 60, "pending and firing delivered")
            client = create_app(settings).test_client()
            alerts = client.get("/api/v1/alerts").get_json()["alerts"]
            assert [(a["id"], a["rule"], a["subject"], a["state"], a["value"]) for a in alerts] == [(1, "Hot", "s", "firing", 95.0)]
            publish(10.0)
            wait_until(delivered("1:1", "1:2", "1:3"), 60, "resolved delivered")
            rules.write_text("rules: [\n")  # a bad edit: the running scheduler keeps the previous rules (and receivers)
            wait_until(lambda: "(keeping the previous rules)" in Path(proc.log_path).read_text(), 60, "the bad edit logged")
            publish(99.0)
            wait_until(delivered("1:1", "1:2", "1:3", "2:1", "2:2"), 60, "a new alert, with the previous rules")
        finally:
            code = stop_process(proc)
        log = Path(proc.log_path).read_text()
        assert code == 0, log
        assert f"alert rules {rules}: not valid YAML" in log and "scheduler: stopping" in log and "Traceback" not in log
        body = receiver.bodies("/hook")[-1]
        assert (body["status"], body["healthmon"]["value"]) == ("firing", 99.0)
        assert body["commonAnnotations"]["summary"] == "s: cpu_pct 99.0 > 90"


@pytest.mark.parametrize("jobs", ["spark"])
def test_schedule_refuses_unknown_job_groups(jobs, tmp_path):
    done = subprocess.run([*HEALTHMON, "schedule", "--jobs", jobs], env=healthmon_env({"HEALTHMON_DATA_DIR": str(tmp_path)}),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "invalid choice: 'spark'" in done.stderr
