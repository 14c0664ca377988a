"""The dashboard in a real browser (Debian's chromium, driven by Playwright) over a real pipeline.

``test_dashboard_over_the_real_pipeline`` starts ``healthmon collect``,
``healthmon speed`` and ``healthmon serve`` on free ports, sends health and
drive-latency datagrams with known values over real UDP, and watches the page
(no reload): both services listed with their current CPU, the CPU chart
plotting exactly the series the API gives and the values that were sent, the
drive panels with p50/p95/p99 and the baseline and fleet reference lines equal
to the percentiles of the sketches that were sent, and the status of the
service that goes silent turning from up to stale or missing.  Every page must
load without a console error, a page error, a failed request, or a request to
another origin.  Screenshots go to ``test-artifacts/screenshots/``.
"""

from __future__ import annotations

import random
import re
import socket
import threading
import time
from pathlib import Path

import pytest
import requests
from playwright.sync_api import Browser, Page, expect, sync_playwright

from alerting.store import AlertStore
from healthmon.config import load_settings
from healthmon.schema import disk_latency_message, encode
from healthmon.sketch import LatencySketch
from healthmon.state import read_state
from serving.server import ApiServer
from tests.procs import free_port, start_healthmon, stop_process, wait_until

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "screenshots"

STEADY, SILENT = "dash-steady", "dash-silent"
CPU = {STEADY: 37.5, SILENT: 62.5}
RAM_FREE_GB = {STEADY: 4.0, SILENT: 8.0}  # of 16 GB: 75 % and 50 % used
SEND_EVERY_S = 0.5
HOST = "dash-host"
FAST, SLOW = "nvme0n1", "nvme1n1"
BASELINE_MINUTES_AGO = (40, 35, 30)  # in the drive's baseline period (before the last disk_recent_s = 15 min)
RECENT_MINUTES_AGO = (5, 3, 1)
RECENT_SCALE_US = {FAST: 80.0, SLOW: 400.0}  # the slow drive is 5x its own baseline (80 µs) and its peer
SILENT_STATUS_COLOURS = {"stale": "rgb(154, 103, 0)", "missing": "rgb(207, 34, 46)"}  # dashboard.css --warn, --bad
UP_COLOUR = "rgb(26, 127, 55)"  # dashboard.css --ok


class PageLog:
    """What a page did wrong: console errors, uncaught errors, failed requests, requests to other origins."""

    def __init__(self, page: Page, origin: str) -> None:
        self.problems: list[str] = []
        self.requests: list[str] = []
        page.on("console", lambda msg: msg.type == "error" and self.problems.append(f"console error: {msg.text}"))
        page.on("pageerror", lambda exc: self.problems.append(f"page error: {exc}"))
        page.on("requestfailed", lambda req: self.problems.append(f"request failed: {req.url} {req.failure}"))
        page.on("response", lambda resp: resp.status >= 400 and self.problems.append(f"HTTP {resp.status}: {resp.url}"))

        def on_request(req) -> None:
            self.requests.append(req.url)
            if not req.url.startswith(origin + "/"):
                self.problems.append(f"request to another origin: {req.url}")

        page.on("request", on_request)


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def open_dashboard(browser: Browser, url: str) -> tuple[Page, PageLog]:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    log = PageLog(page, url)
    page.goto(url + "/")
    return page, log


def refreshes(page: Page) -> int:
    return page.evaluate("() => window.healthmon.state.refreshes")


def wait_refreshes(page: Page, n: int) -> None:
    """Wait until the page has refreshed itself ``n`` more times."""
    target = refreshes(page) + n
    page.wait_for_function(f"() => window.healthmon.state.refreshes >= {target}", timeout=30_000)


def screenshot(page: Page, name: str, record_property, capsys) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / name
    page.screenshot(path=str(path), full_page=True)
    record_property(f"screenshot:{name}", str(path))
    with capsys.disabled():
        print(f"\n  screenshot: {path}")
    return path


def health_message(service: str) -> dict:
    return {
        "type": "health", "service": service, "ts": time.time(), "cpu_pct": CPU[service],
        "ram_total_gb": 16.0, "ram_free_gb": RAM_FREE_GB[service], "disk_total_gb": 512.0, "disk_free_gb": 128.0,
    }


class Sender:
    """Sends one health message per running service every SEND_EVERY_S seconds over real UDP."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.running = {STEADY, SILENT}
        self.done = threading.Event()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.done.is_set():
            for service in sorted(self.running):
                self.sock.sendto(encode(health_message(service)), ("127.0.0.1", self.port))
            self.done.wait(SEND_EVERY_S)

    def close(self) -> None:
        self.done.set()
        self.thread.join(5)
        self.sock.close()


def drive_messages(now: float) -> dict[str, dict[str, list[dict]]]:
    """Read latency of two drives, a few minutes apart: {device: {"baseline": [...], "recent": [...]}}."""
    rng = random.Random(6)
    out: dict[str, dict[str, list[dict]]] = {}
    for device in (FAST, SLOW):
        out[device] = {}
        for period, minutes, scale in (("baseline", BASELINE_MINUTES_AGO, 80.0), ("recent", RECENT_MINUTES_AGO, RECENT_SCALE_US[device])):
            messages = []
            for ago in minutes:
                # In the middle of its minute: one message per window, so a chart point is that message's sketch.
                ts = (now - ago * 60) // 60 * 60 + 30.0
                latencies = LatencySketch()
                for _ in range(200):
                    latencies.add(rng.lognormvariate(0, 0.5) * scale)
                messages.append(disk_latency_message(HOST, device, "read", ts, 5.0, latencies, source="mock"))
            out[device][period] = messages
    return out


def merged_p99(messages: list[dict]) -> float:
    merged = LatencySketch()
    for m in messages:
        merged.merge(LatencySketch.from_pairs(m["buckets"], m["sum_us"], m["max_us"]))
    return merged.quantile(0.99)


@pytest.mark.slow
@pytest.mark.spark
def test_dashboard_over_the_real_pipeline(tmp_path, browser, record_property, capsys):
    udp_port, api_port = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_STREAM)
    env = {
        "HEALTHMON_DATA_DIR": str(tmp_path / "var"),
        "HEALTHMON_UDP_PORT": str(udp_port),
        "HEALTHMON_API_PORT": str(api_port),
        "HEALTHMON_SEGMENT_MAX_SECONDS": "0.2",
        # Quick liveness, with a floor above the pipeline's own delay (~5 s measured with the browser and
        # Spark sharing 2 cores, ~10 s when other Spark jobs run too), so a service that keeps sending stays up.
        "HEALTHMON_LIVENESS_STALE_MIN_S": "12",
        "HEALTHMON_LIVENESS_STALE_FACTOR": "2",
        "HEALTHMON_LIVENESS_MISSING_S": "60",
        "HEALTHMON_DASHBOARD_REFRESH_S": "1",
    }
    api = f"http://127.0.0.1:{api_port}"
    procs = [start_healthmon(["collect"], env), start_healthmon(["speed"], env), start_healthmon(["serve"], env)]
    sender = Sender(udp_port)
    try:
        wait_until(lambda: requests.get(f"{api}/healthz", timeout=1).ok, 30, "API up")
        wait_until(lambda: (read_state(tmp_path / "var" / "state", "speed") or {}).get("state") == "streaming", 120, "speed job")
        drives = drive_messages(time.time())
        for periods in drives.values():
            for messages in periods.values():
                for m in messages:
                    sender.sock.sendto(encode(m), ("127.0.0.1", udp_port))
        sender.thread.start()

        page, log = open_dashboard(browser, api)
        page.evaluate("() => { window.notReloaded = true; }")
        assert page.evaluate("() => window.healthmon.state.refreshS") == 1

        # The services table: both services, up, with the CPU they send.
        for service in (STEADY, SILENT):
            row = page.locator(f'#services tr[data-service="{service}"]')
            expect(row.locator("td.cpu")).to_have_text(f"{CPU[service]:.1f}", timeout=60_000)
            expect(row.locator("td.status")).to_have_attribute("data-status", "up", timeout=60_000)
        expect(page.locator(f'#services tr[data-service="{STEADY}"] td.ram')).to_have_text("75.0")

        # The CPU chart of the selected service plots exactly the API's series, which holds the values sent.
        page.locator(f'#services tr[data-service="{STEADY}"] button.service-name').click()
        expect(page.locator("#selected-service")).to_have_text(STEADY)
        expect(page.locator(f'#services tr[data-service="{STEADY}"]')).to_have_class("selected")
        page.wait_for_function(f"() => (window.healthmon.data.series || {{}}).service === '{STEADY}'")
        wait_refreshes(page, 2)  # still selected after the page refreshed itself
        plotted = page.evaluate("""() => {
            const h = window.healthmon;
            const pick = (name) => ({data: h.charts[name].data, labels: h.charts[name].series.map((s) => s.label),
                                     width: h.charts[name].width, height: h.charts[name].height});
            return {selected: h.state.selected, series: h.data.series,
                    cpu: pick("cpu_pct"), ram: pick("ram_used_pct"), disk: pick("disk_used_pct")};
        }""")
        assert plotted["selected"] == STEADY and plotted["series"]["service"] == STEADY
        assert plotted["series"]["step"] == "60s"
        assert plotted["cpu"]["labels"] == ["time (UTC)", "avg", "min", "max"]
        assert plotted["cpu"]["width"] > 200 and plotted["cpu"]["height"] > 100
        series = plotted["series"]
        answer = requests.get(f"{api}/api/v1/services/{STEADY}/series",
                              params={"from": series["from_ts"], "to": series["to_ts"]}, timeout=10).json()
        xs, avg, low, high = plotted["cpu"]["data"]
        assert xs == [p["ts"] for p in answer["points"]]
        assert [avg, low, high] == [[p["cpu_pct"][agg] for p in answer["points"]] for agg in ("avg", "min", "max")]
        sent = [v for v in avg if v is not None]
        assert sent and set(sent) == {CPU[STEADY]}
        assert {v for v in plotted["ram"]["data"][1] if v is not None} == {75.0}
        assert {v for v in plotted["disk"]["data"][1] if v is not None} == {75.0}

        # Drive panels over the default range (1h): p50/p95/p99 per minute equal the sketches sent; the
        # reference lines are the device's baseline p99 and the fleet median p99 (its only peer's recent p99).
        keys = [f"{HOST}/{device}/read" for device in (FAST, SLOW)]
        page.wait_for_function(f"""() => {{ const d = window.healthmon.data.drives;
            return {keys!r}.every((k) => d[k] && Math.round(d[k].latency.to_ts - d[k].latency.from_ts) === 3600); }}""")
        wait_refreshes(page, 1)
        for device, peer in ((FAST, SLOW), (SLOW, FAST)):
            key = f"{HOST}/{device}/read"
            chart = page.evaluate(f"""() => {{ const c = window.healthmon.charts['drive:{key}'];
                return {{data: c.data, labels: c.series.map((s) => s.label)}}; }}""")
            assert chart["labels"] == ["time (UTC)", "p50", "p95", "p99", "baseline p99", "fleet median p99"]
            xs, p50, p95, p99, baseline, fleet = chart["data"]
            for m in drives[device]["baseline"] + drives[device]["recent"]:
                sketch = LatencySketch.from_pairs(m["buckets"], m["sum_us"], m["max_us"])
                i = xs.index(m["ts"] // 60 * 60)
                assert (p50[i], p95[i], p99[i]) == (sketch.quantile(0.5), sketch.quantile(0.95), sketch.quantile(0.99))
            assert set(baseline) == {merged_p99(drives[device]["baseline"])}
            assert set(fleet) == {merged_p99(drives[peer]["recent"])}
        expect(page.locator(f'.drive[data-drive="{HOST}/{SLOW}/read"] .badge')).to_have_text("degraded")
        expect(page.locator(f'.drive[data-drive="{HOST}/{FAST}/read"] .badge')).to_have_text("ok")

        # The range selector: the API picks the step and the page shows it.
        for label, seconds, step in (("7d", 7 * 86400, "1h"), ("15m", 900, "60s")):
            page.locator(f'#ranges button[data-range="{label}"]').click()
            page.wait_for_function(f"""() => {{ const s = window.healthmon.data.series;
                return s && s.service === '{STEADY}' && Math.round(s.to_ts - s.from_ts) === {seconds}; }}""")
            expect(page.locator("#step")).to_contain_text(f"step {step}")
            cpu = page.evaluate("() => window.healthmon.charts.cpu_pct.data[1]")
            assert {v for v in cpu if v is not None} == {CPU[STEADY]}, label
        expect(page.locator('#ranges button[data-range="15m"]')).to_have_attribute("aria-pressed", "true")

        # Alerts: the active ones as the API lists them, or "alerts unavailable" when the API has none.
        if page.locator("body").get_attribute("data-alerts-url"):
            def alerts_match() -> bool:
                active = requests.get(f"{api}/api/v1/alerts", timeout=10).json()["alerts"]
                if not active:
                    return page.locator("#alerts-message").text_content() == "no active alerts"
                return page.locator("#alerts-table tbody tr").count() == len(active)

            wait_until(alerts_match, 15, "the page lists the API's active alerts")
        else:
            expect(page.locator("#alerts-message")).to_contain_text("alerts unavailable")
        screenshot(page, "dashboard-live.png", record_property, capsys)

        # One service goes silent: on the open page its status turns stale or missing while the other one,
        # sending all along, is up in the same refresh (so it is the silence, not a late pipeline, that shows).
        sender.running.discard(SILENT)
        shown = page.wait_for_function(f"""() => {{
            const cell = (s) => {{ const badge = document.querySelector(`#services tr[data-service="${{s}}"] td.status .badge`);
                                  return {{text: badge.textContent, colour: getComputedStyle(badge).color}}; }};
            const silent = cell('{SILENT}'), steady = cell('{STEADY}');
            return ['stale', 'missing'].includes(silent.text) && steady.text === 'up' && {{silent, steady}}; }}""",
            timeout=60_000).json_value()
        assert shown["silent"]["colour"] == SILENT_STATUS_COLOURS[shown["silent"]["text"]]
        assert shown["steady"]["colour"] == UP_COLOUR
        screenshot(page, "dashboard-silent.png", record_property, capsys)
        assert page.evaluate("() => window.notReloaded === true")
        assert page.evaluate("() => window.healthmon.state.selected") == STEADY

        assert log.problems == []
        assert any("/vendor/uplot/uPlot.iife.min.js" in url for url in log.requests)
        page.close()
    finally:
        sender.close()
        for proc in procs:
            stop_process(proc)


def test_the_page_says_when_the_charts_library_is_missing(tmp_path, browser, record_property, capsys):
    """Without node_modules the page still loads cleanly, says the library is missing, and shows its tables."""
    settings = load_settings({"data_dir": str(tmp_path / "var"), "web_modules_dir": str(tmp_path / "node_modules"), "api_port": 0,
                              "api_threads": 2}, environ={})
    server, thread = serve(settings)
    try:
        page, log = open_dashboard(browser, server.url)
        expect(page.locator("#charts-missing")).to_contain_text("charts library is missing")
        expect(page.locator("#services tr.empty")).to_have_text("no service has sent a message yet")
        page.wait_for_function("() => window.healthmon.state.refreshes >= 1")
        assert page.evaluate("() => [window.healthmon.state.chartsOn, Object.keys(window.healthmon.charts)]") == [False, []]
        expect(page.locator("#service-charts .no-chart")).to_have_count(3)
        screenshot(page, "dashboard-no-charts-library.png", record_property, capsys)
        assert log.problems == []
        assert not any("/vendor/" in url for url in log.requests)
        assert requests.get(f"{server.url}/vendor/uplot/uPlot.iife.min.js", timeout=5).status_code == 404
        page.close()
    finally:
        server.stop(wait=5)
        thread.join(5)


def serve(settings):
    """The API app in a thread of this process (for pages that need no pipeline)."""
    server = ApiServer(settings)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread


def test_active_alerts_are_listed_firing_first(tmp_path, browser, record_property, capsys):
    """The alerts the store holds as the scheduler writes them: active ones listed, resolved ones not, text as text."""
    settings = load_settings({"data_dir": str(tmp_path / "var"), "api_port": 0, "api_threads": 2}, environ={})
    now = time.time()
    store = AlertStore(settings.alerts_db)
    with store.transaction():
        for rule, subject, severity, states in (
            ("CpuHigh", "dash-steady", "warning", ("pending",)),
            ("ServiceMissing", "dash-silent", "critical", ("pending", "firing")),
            ("DiskFull", "dash-old", "warning", ("pending", "firing", "resolved")),
        ):
            alert_id = store.open_alert(rule=rule, subject=subject, kind="metric", severity=severity, labels={}, fingerprint=rule,
                                        summary=f"<b>{subject}</b> needs a look", value=91.0, threshold=90.0, now=now - 60)
            for i, state in enumerate(states):
                store.add_transition(alert_id, state, now - 60 + 10 * i, 91.0)
    store.close()
    server, thread = serve(settings)
    try:
        page, log = open_dashboard(browser, server.url)
        rows = page.locator("#alerts-table tbody tr")
        expect(rows).to_have_count(2)
        expect(rows.nth(0).locator("td")).to_have_text(
            ["firing", "critical", "ServiceMissing", "dash-silent", "<b>dash-silent</b> needs a look", "91.00", re.compile(r"\d{4}-")])
        expect(rows.nth(1).locator("td").nth(0)).to_have_text("pending")
        expect(rows.nth(1).locator("td").nth(2)).to_have_text("CpuHigh")
        expect(page.locator("#alerts-count")).to_have_text("(2)")
        expect(page.locator("#alerts b")).to_have_count(0)  # the summary is text, never markup
        screenshot(page, "dashboard-alerts.png", record_property, capsys)
        assert log.problems == []
        page.close()
    finally:
        server.stop(wait=5)
        thread.join(5)
