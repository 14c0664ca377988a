"""The alert store: alerts, their transitions and the webhook outbox, in one SQLite file.

``settings.alerts_db`` (``<data_dir>/alerts/alerts.sqlite``) in WAL mode: one
writer process (the scheduler: its evaluation job and its notifier thread,
each with its own connection, serialized by SQLite's lock) and any number of
readers (the API opens it read-only per request, ``connect_readonly``), which
never block the writer nor see a half-applied evaluation.

Tables:

- ``alerts``: one row per alert instance: ``(rule, subject)``, its state
  (``pending`` | ``firing`` | ``resolved``), labels, summary, the latest value
  and threshold, and when it started, fired and resolved.  At most one
  instance per (rule, subject) is not resolved (a partial unique index); a
  resolved alert whose condition comes back opens a new instance (new id).
- ``transitions``: the history of each alert, ``seq`` 1, 2, ... with the
  state entered, when, and the value then.
- ``outbox``: one row per transition and receiver, written in the same
  transaction as the transition, holding the exact JSON body to POST; the
  notifier marks it delivered, or records the attempts and last error and
  when to try again.

Resolved alerts (with their transitions and outbox rows) are deleted
``alert_history_days`` after they resolved.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import orjson

SCHEMA_VERSION = 1
"""``PRAGMA user_version`` of a store whose tables are all created."""

BUSY_TIMEOUT_MS = 10_000
"""How long a connection waits for the other writer connection's lock."""

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS alerts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    rule TEXT NOT NULL,
    subject TEXT NOT NULL,
    kind TEXT NOT NULL,
    severity TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'firing', 'resolved')),
    labels TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    summary TEXT NOT NULL,
    value REAL,
    threshold REAL,
    started_at REAL NOT NULL,
    fired_at REAL,
    resolved_at REAL,
    updated_at REAL NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS alerts_one_active ON alerts (rule, subject) WHERE state != 'resolved';
CREATE INDEX IF NOT EXISTS alerts_by_resolved_at ON alerts (resolved_at);
CREATE TABLE IF NOT EXISTS transitions (
    alert_id INTEGER NOT NULL REFERENCES alerts (id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    state TEXT NOT NULL,
    at REAL NOT NULL,
    value REAL,
    PRIMARY KEY (alert_id, seq)
);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    alert_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    receiver TEXT NOT NULL,
    url TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    payload BLOB NOT NULL,
    created_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    rounds INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error TEXT,
    delivered_at REAL,
    UNIQUE (alert_id, seq, receiver),
    FOREIGN KEY (alert_id, seq) REFERENCES transitions (alert_id, seq) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS outbox_undelivered ON outbox (id) WHERE delivered_at IS NULL;
PRAGMA user_version = {SCHEMA_VERSION};
"""

_ALERT_COLUMNS = (
    "id, rule, subject, kind, severity, state, labels, fingerprint, summary, value, threshold, started_at, fired_at, resolved_at"
)


def _alert(row: sqlite3.Row) -> dict:
    alert = dict(row)
    alert["labels"] = orjson.loads(alert["labels"])
    return alert


class AlertStore:
    """A writer connection to the alert store (created with its tables if needed).

    Use ``with store.transaction():`` around the changes of one evaluation so
    readers see all of it or none of it.  One store per thread that writes.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Autocommit mode: transactions are explicit (BEGIN IMMEDIATE takes the write lock up front).
        self.con = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000)
        self.con.row_factory = sqlite3.Row
        self.con.execute("PRAGMA journal_mode = WAL")
        self.con.execute("PRAGMA foreign_keys = ON")
        self.con.execute("PRAGMA synchronous = NORMAL")  # WAL: durable at checkpoints, never corrupt
        self._lock = threading.RLock()
        # Idempotent; user_version is set last, so a reader sees a store without it as "no store yet".
        self.con.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self.con.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction (nested calls join the outer one)."""
        with self._lock:
            if self.con.in_transaction:
                yield
                return
            self.con.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self.con.execute("ROLLBACK")
                raise
            self.con.execute("COMMIT")

    # ------------------------------------------------------------ alerts

    def active_alerts(self) -> dict[tuple[str, str], dict]:
        """Every pending or firing alert, by (rule, subject)."""
        rows = self.con.execute(f"SELECT {_ALERT_COLUMNS} FROM alerts WHERE state != 'resolved'").fetchall()
        return {(r["rule"], r["subject"]): _alert(r) for r in rows}

    def alert(self, alert_id: int) -> dict:
        return _alert(self.con.execute(f"SELECT {_ALERT_COLUMNS} FROM alerts WHERE id = ?", [alert_id]).fetchone())

    def open_alert(self, *, rule: str, subject: str, kind: str, severity: str, labels: dict, fingerprint: str, summary: str,
                   value: float | None, threshold: float | None, now: float) -> int:
        """A new alert instance, ``pending`` since ``now``, without transitions yet (see ``add_transition``)."""
        cur = self.con.execute(
            "INSERT INTO alerts (rule, subject, kind, severity, state, labels, fingerprint, summary, value, threshold, started_at, "
            "updated_at) VALUES (?, ?, ?, ?, 'pending', ?, ?, ?, ?, ?, ?, ?)",
            [rule, subject, kind, severity, orjson.dumps(labels, option=orjson.OPT_SORT_KEYS).decode(), fingerprint, summary,
             value, threshold, now, now],
        )
        return int(cur.lastrowid)

    def add_transition(self, alert_id: int, state: str, now: float, value: float | None) -> int:
        """Record that the alert entered ``state`` at ``now``; sets its state and times; returns the transition's seq."""
        (seq,) = self.con.execute("SELECT coalesce(max(seq), 0) + 1 FROM transitions WHERE alert_id = ?", [alert_id]).fetchone()
        self.con.execute("INSERT INTO transitions (alert_id, seq, state, at, value) VALUES (?, ?, ?, ?, ?)",
                         [alert_id, seq, state, now, value])
        times = {"pending": "", "firing": ", fired_at = :now", "resolved": ", resolved_at = :now"}[state]
        # The alert's value is the latest one observed: a resolution without one (subject gone) keeps the last.
        self.con.execute(
            f"UPDATE alerts SET state = :state, value = coalesce(:value, value), updated_at = :now{times} WHERE id = :id",
            {"state": state, "value": value, "now": now, "id": alert_id},
        )
        return int(seq)

    def update_alert(self, alert_id: int, *, value: float | None, threshold: float | None, summary: str, now: float) -> None:
        """The latest value, threshold and summary of an active alert (no transition)."""
        self.con.execute(
            "UPDATE alerts SET value = ?, threshold = ?, summary = ?, updated_at = ? WHERE id = ?",
            [value, threshold, summary, now, alert_id],
        )

    def prune(self, resolved_before: float) -> int:
        """Delete alerts resolved before ``resolved_before`` with their history and outbox rows; returns alerts deleted."""
        with self.transaction():
            self.con.execute(
                "DELETE FROM outbox WHERE alert_id IN (SELECT id FROM alerts WHERE state = 'resolved' AND resolved_at < ?)",
                [resolved_before],
            )
            cur = self.con.execute("DELETE FROM alerts WHERE state = 'resolved' AND resolved_at < ?", [resolved_before])
            return cur.rowcount

    # ------------------------------------------------------------ outbox

    def queue(self, alert_id: int, seq: int, receiver: str, url: str, key: str, payload: bytes, now: float) -> None:
        """One delivery of a transition to a receiver, due at once (call inside the transition's transaction)."""
        self.con.execute(
            "INSERT INTO outbox (alert_id, seq, receiver, url, idempotency_key, payload, created_at, next_attempt_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [alert_id, seq, receiver, url, key, payload, now, now],
        )

    def undelivered(self, limit: int = 1000) -> list[dict]:
        """Undelivered outbox rows, oldest first (due or not: a receiver's later rows wait behind its earlier ones)."""
        rows = self.con.execute(
            "SELECT id, alert_id, seq, receiver, url, idempotency_key, payload, attempts, rounds, next_attempt_at FROM outbox "
            "WHERE delivered_at IS NULL ORDER BY id LIMIT ?",
            [limit],
        ).fetchall()
        return [dict(r) for r in rows]

    def mark_delivered(self, outbox_id: int, now: float, attempts: int) -> None:
        with self.transaction():
            self.con.execute(
                "UPDATE outbox SET delivered_at = ?, attempts = attempts + ?, rounds = rounds + 1, last_error = NULL WHERE id = ?",
                [now, attempts, outbox_id],
            )

    def mark_failed(self, outbox_id: int, attempts: int, error: str, next_attempt_at: float) -> None:
        with self.transaction():
            self.con.execute(
                "UPDATE outbox SET attempts = attempts + ?, rounds = rounds + 1, last_error = ?, next_attempt_at = ? WHERE id = ?",
                [attempts, error[:1000], next_attempt_at, outbox_id],
            )

    def outbox(self) -> list[dict]:
        """Every outbox row without its payload, in order (for tests and inspection)."""
        rows = self.con.execute(
            "SELECT id, alert_id, seq, receiver, url, idempotency_key, created_at, attempts, rounds, next_attempt_at, last_error, "
            "delivered_at FROM outbox ORDER BY id"
        ).fetchall()
        return [dict(r) for r in rows]


# ---------------------------------------------------------------- readers


def connect_readonly(path: Path) -> sqlite3.Connection | None:
    """A read-only connection to the store, or None when it does not exist (yet) or has no tables yet."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
        con.row_factory = sqlite3.Row
        (version,) = con.execute("PRAGMA user_version").fetchone()
    except sqlite3.OperationalError:
        return None
    if version != SCHEMA_VERSION:
        con.close()
        return None
    return con


def list_alerts(con: sqlite3.Connection, resolved_since: float | None) -> list[dict]:
    """Active alerts, plus those resolved at or after ``resolved_since`` (none when None), each with its ``transitions``.

    Sorted firing first, then pending, then resolved; within a state the one
    that entered it last comes first (then the larger id).
    """
    where = "a.state != 'resolved'"
    params: list = []
    if resolved_since is not None:
        where += " OR a.resolved_at >= ?"
        params.append(resolved_since)
    columns = ", ".join(f"a.{c.strip()}" for c in _ALERT_COLUMNS.split(","))
    con.execute("BEGIN")  # one read snapshot for both statements
    try:
        return _read_alerts(con, columns, where, params)
    finally:
        con.execute("ROLLBACK")


def _read_alerts(con: sqlite3.Connection, columns: str, where: str, params: list) -> list[dict]:
    rows = con.execute(
        f"SELECT {columns} FROM alerts a WHERE {where} "
        "ORDER BY CASE a.state WHEN 'firing' THEN 0 WHEN 'pending' THEN 1 ELSE 2 END, "
        "CASE a.state WHEN 'firing' THEN a.fired_at WHEN 'pending' THEN a.started_at ELSE a.resolved_at END DESC, a.id DESC",
        params,
    ).fetchall()
    alerts = [_alert(r) for r in rows]
    by_id = {a["id"]: a for a in alerts}
    for a in alerts:
        a["transitions"] = []
    history = con.execute(
        f"SELECT t.alert_id, t.seq, t.state, t.at, t.value FROM transitions t JOIN alerts a ON a.id = t.alert_id WHERE {where} "
        "ORDER BY t.alert_id, t.seq",
        params,
    )
    for t in history:
        by_id[t["alert_id"]]["transitions"].append({"seq": t["seq"], "state": t["state"], "at": t["at"], "value": t["value"]})
    return alerts
