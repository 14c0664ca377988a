"""``healthmon top``: a live console view of the services, their status and current values.

It polls the HTTP API (``--url``, default the configured ``api_host:api_port``)
every ``--interval`` seconds and redraws one screen with rich:

- a header: the URL and the time of the last poll; services by status; hosts
  by status (``GET /api/v1/hosts``); active alerts (``GET /api/v1/alerts``,
  ``n/a`` when the API has no alerts endpoint) with how many are firing; the
  batch view's horizon (``GET /api/v1/pipeline``);
- a table, one row per service in the API's order (by name): status (up green,
  stale yellow, missing red), how long it has been silent, the current CPU,
  RAM used and disk used %, and its message count (``GET /api/v1/services``).

The API being down does not stop it: the header shows the error in red, the
table keeps the last data it got (saying from when), and the next poll tries
again.  Ctrl-C and SIGTERM end it cleanly (exit 0) after the poll in progress.

``--once`` prints one frame, plain (no colours when the output is not a
terminal, no live redraw), and exits: 0 when the API answered, 1 when it did
not (the frame then names the error).  ``--iterations N`` ends the live view
after N frames (tests, recordings).
"""

from __future__ import annotations

import re
import signal
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import requests
from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from healthmon.config import Settings
from healthmon.schema import HEALTH_METRICS

API = "/api/v1"
STATUS_STYLES = {"up": "green", "stale": "yellow", "missing": "bold red"}
"""Colour of each liveness status."""
CONNECT_TIMEOUT_S = 1.0
"""How long a poll waits to connect to the API (it is normally local)."""
MIN_READ_TIMEOUT_S = 5.0
"""The least time a poll waits for an answer (more with a longer --interval); a cold answer on a busy host takes ~1 s."""
_ERRNO_RE = re.compile(r"\[Errno -?\d+\] ([^'\")]+)")


class ApiUnavailable(Exception):
    """The API did not give a usable answer (unreachable, timed out, or an error status)."""


@dataclass
class Frame:
    """What one poll saw; ``services`` are the last ones the API gave (from ``data_at``), even when this poll failed."""

    url: str
    polled_at: float
    services: list[dict] = field(default_factory=list)
    data_at: float | None = None
    hosts: list[dict] | str | None = None  # a str when there is no list: "n/a" (no such endpoint) or the error
    alerts: list[dict] | str | None = None
    horizon: str | None = None  # ISO; None before the first batch build; "n/a" or the error when unknown
    error: str | None = None


def default_url(settings: Settings) -> str:
    """The API's URL from ``api_host``/``api_port`` (a wildcard listen address is reached on loopback)."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(settings.api_host, settings.api_host)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.api_port}"


def describe(exc: requests.RequestException, url: str) -> str:
    """A one-line reason for a failed request (requests' own messages run to several hundred characters)."""
    if isinstance(exc, requests.Timeout):
        return f"no answer from {url} in time ({type(exc).__name__})"
    if isinstance(exc, requests.ConnectionError):
        found = _ERRNO_RE.search(str(exc))
        return f"cannot connect to {url}: {found.group(1).strip() if found else type(exc).__name__}"
    return f"{type(exc).__name__}: {str(exc)[:160]}"


class Poller:
    """Polls the API; keeps the last good service list across failed polls."""

    def __init__(self, url: str, interval_s: float, clock=time.time) -> None:
        self.url = url.rstrip("/")
        self.timeout = (CONNECT_TIMEOUT_S, max(MIN_READ_TIMEOUT_S, interval_s))
        self.session = requests.Session()
        self.clock = clock
        self.services: list[dict] = []
        self.data_at: float | None = None

    def get(self, path: str) -> dict | None:
        """The JSON answer of ``GET path``; None for 404 (an endpoint this API does not have)."""
        try:
            resp = self.session.get(f"{self.url}{path}", timeout=self.timeout)
        except requests.RequestException as exc:
            raise ApiUnavailable(describe(exc, self.url)) from None
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            try:
                detail = resp.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                detail = resp.text[:120]
            raise ApiUnavailable(f"GET {path}: HTTP {resp.status_code} {detail}")
        try:
            return resp.json()
        except ValueError:
            raise ApiUnavailable(f"GET {path}: not JSON") from None

    def field(self, path: str, key: str):
        """``key`` of the answer of ``GET path``; None for 404; ApiUnavailable when the answer lacks it."""
        answer = self.get(path)
        if answer is None:
            return None
        if not isinstance(answer, dict) or key not in answer:
            raise ApiUnavailable(f"GET {path}: no {key!r} in the answer (is {self.url} a healthmon API?)")
        return answer[key]

    def _optional(self, path: str, key: str):
        """``key`` of the answer, "n/a" when the API has no such endpoint, "error (...)" when it failed."""
        try:
            value = self.field(path, key)
        except ApiUnavailable as exc:
            return f"error ({exc})"
        return "n/a" if value is None else value

    def poll(self) -> Frame:
        frame = Frame(self.url, self.clock())
        try:
            services = self.field(f"{API}/services", "services")
            if not isinstance(services, list):
                raise ApiUnavailable(f"GET {API}/services: HTTP 404 or no list of services (is {self.url} a healthmon API?)")
        except ApiUnavailable as exc:
            frame.error = str(exc)
        else:
            self.services, self.data_at = [x for x in services if isinstance(x, dict)], frame.polled_at
            frame.hosts = self._optional(f"{API}/hosts", "hosts")
            frame.alerts = self._optional(f"{API}/alerts", "alerts")
            frame.horizon = self._optional(f"{API}/pipeline", "horizon")
        frame.services, frame.data_at = self.services, self.data_at
        return frame


# ---------------------------------------------------------------- rendering


def duration(seconds: float | None) -> str:
    """``42s``, ``3m05s``, ``2h07m``, ``3d04h``: the two largest units."""
    if seconds is None:
        return "–"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def clock_time(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%H:%M:%SZ")


def _by_status(items: list[dict]) -> str:
    """``2 up, 1 stale``: the known statuses in their order, then any other."""
    counts: dict[str, int] = {}
    for item in items:
        status = item.get("status") or "?"
        counts[status] = counts.get(status, 0) + 1
    order = [s for s in STATUS_STYLES if s in counts] + sorted(set(counts) - set(STATUS_STYLES))
    return ", ".join(f"{counts[s]} {s}" for s in order)


def _count_with_statuses(label: str, items: list[dict] | str | None) -> Text:
    """``services 3 (2 up, 1 stale)``; ``None``: nothing fetched yet; a str: n/a or the error."""
    if items is None:
        return Text(f"{label} –", style="dim")
    if isinstance(items, str):
        return Text(f"{label} {items}", style="dim" if items == "n/a" else "red")
    detail = f" ({_by_status(items)})" if items else ""
    return Text(f"{label} {len(items)}{detail}")


def _alerts(alerts: list[dict] | str | None) -> Text:
    if alerts is None:
        return Text("alerts –", style="dim")
    if isinstance(alerts, str):
        return Text(f"alerts {alerts}", style="dim" if alerts == "n/a" else "red")
    firing = sum(1 for a in alerts if a.get("state") == "firing")
    style = "bold red" if firing else ("yellow" if alerts else "green")
    return Text(f"alerts {len(alerts)} active ({firing} firing)", style=style)


def header(frame: Frame, interval_s: float | None) -> Text:
    """The lines above the table; ``interval_s`` None: a single frame (``--once``), so no "every"/"retrying"."""
    text = Text()
    text.append("healthmon top", style="bold")
    text.append(f"  {frame.url}  polled {clock_time(frame.polled_at)}")
    text.append(f" every {interval_s:g}s" if interval_s else "")
    failed = frame.error is not None  # then hosts, alerts and horizon are unknown: shown as "–"
    # Two facts a line: the header stays unwrapped on an 80-column terminal.
    services = _count_with_statuses("services", frame.services if frame.data_at else None)
    hosts = _count_with_statuses("hosts", None if failed else frame.hosts)
    horizon = Text(f"horizon {'–' if failed else frame.horizon or 'none yet'}")
    text.append("\n").append_text(Text("   ").join([services, hosts]))
    text.append("\n").append_text(Text("   ").join([_alerts(None if failed else frame.alerts), horizon]))
    if failed:
        since = f"; table from {clock_time(frame.data_at)}" if frame.data_at else ""
        retry = "; retrying" if interval_s else ""
        text.append(f"\nAPI error: {frame.error}{since}{retry}", style="bold red")
    return text


def _pct(value) -> str:
    return "–" if value is None else f"{value:.1f}"


def table(services: list[dict]) -> Table:
    out = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    out.add_column("service", no_wrap=True)
    out.add_column("status")
    out.add_column("silent for", justify="right")
    for label in ("cpu %", "ram %", "disk %"):
        out.add_column(label, justify="right")
    out.add_column("messages", justify="right")
    for s in services:
        status = s.get("status") or "?"
        current = s.get("current") or {}
        out.add_row(
            str(s.get("service", "?")), Text(status, style=STATUS_STYLES.get(status, "dim")), duration(s.get("silent_s")),
            *(_pct(current.get(m)) for m in HEALTH_METRICS), f"{s.get('count', 0):,}",
        )
    return out


def render(frame: Frame, interval_s: float | None) -> Group:
    return Group(header(frame, interval_s), Text(""), table(frame.services))


# ---------------------------------------------------------------- the command


def run(settings: Settings, args) -> int:
    """``healthmon top``: ``--once`` prints one frame; otherwise redraw every ``--interval`` s until a signal or ``--iterations``."""
    poller = Poller(args.url or default_url(settings), args.interval)
    console = Console()
    if args.once:
        frame = poller.poll()
        console.print(render(frame, None))
        return 1 if frame.error else 0
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    frames = 0
    with Live(console=console, auto_refresh=False, redirect_stdout=False, redirect_stderr=False) as live:
        while not stop.is_set():
            started = time.monotonic()
            live.update(render(poller.poll(), args.interval), refresh=True)
            frames += 1
            if args.iterations is not None and frames >= args.iterations:
                break
            stop.wait(max(0.0, args.interval - (time.monotonic() - started)))
    return 0
