"""The OpenAPI description, Swagger UI, and schemathesis against the running API.

The module's server is a real ``healthmon serve`` on a free port over view
files holding old (2024) and recent service health, recent drive latency
(so the liveness, drive health and latency answers are not empty), batch
build records and collector state.  schemathesis (its CLI, as an operator
would run it) reads ``/openapi.json`` from that server and sends generated
requests to every operation: no 5xx, and every answer's status, media type and
body match the document.
"""

from __future__ import annotations

import json
import math
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from apispec_webframeworks.flask import FlaskPlugin
from jsonschema import Draft202012Validator

from alerting.store import AlertStore
from healthmon.config import load_settings
from healthmon.schema import DISK_OPS
from healthmon.sketch import LatencySketch
from healthmon.views import DISK_LATENCY, DISK_LATENCY_BUCKET, REALTIME_VIEW, update_view
from serving import openapi
from serving.app import create_app
from tests.procs import free_port, stop_process
from tests.test_merge_rule import insert_rows, insert_table, make_messages, window_rows
from tests.test_serving import build_data, start_server

SCHEMATHESIS = Path(sys.executable).with_name("st")
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
SERVICES = ("api-gateway", "auth")  # the first is the documented example of a service name
DRIVES = [("host-00", "nvme0n1"), ("host-00", "nvme1n1"), ("host-01", "nvme0n1")]  # the first is the documented example
RECENT_S = 2 * 3600
SEED = 20240101


def disk_rows(now: float, seed: int = 5) -> tuple[list[dict], list[dict]]:
    """Window rows of drive latency (and their sketch buckets) for ``DRIVES`` over the last ``RECENT_S``."""
    rng = random.Random(seed)
    rows, buckets = [], []
    last_window = int(now // 60 * 60)
    for host, device in DRIVES:
        for op in DISK_OPS:
            for start in range(last_window - RECENT_S, last_window, 60):
                sketch = LatencySketch()
                for _ in range(20):
                    sketch.add(rng.lognormvariate(math.log(150), 0.5))
                rows.append({
                    "host": host, "device": device, "op": op, "window_start": start, "messages": 1, "count": sketch.count,
                    "sum_us": sketch.sum_us, "max_us": sketch.max_us, "sketched_count": sketch.count, "source": "mock",
                    "last_ts": start + 30.0,
                })
                buckets += [{"host": host, "device": device, "op": op, "bucket": b, "window_start": start, "count": c}
                            for b, c in sketch.buckets.items()]
    return rows, buckets


def add_recent_data(views_dir: Path, now: float) -> None:
    """Recent health of ``SERVICES`` and drive latency of ``DRIVES`` in the real-time view."""
    health = window_rows(make_messages(now - RECENT_S, now - 5, services=SERVICES, seed=7, mean_gap=10))
    disks, buckets = disk_rows(now)

    def change(con):
        insert_rows(con, "health_window", health)
        insert_table(con, DISK_LATENCY.table(), DISK_LATENCY.columns, disks)
        insert_table(con, DISK_LATENCY_BUCKET.table(), DISK_LATENCY_BUCKET.columns, buckets)

    update_view(views_dir / REALTIME_VIEW, change)


def add_alerts(alerts_db: Path, now: float) -> None:
    """One resolved, one firing and one pending alert in the alert store, with their transitions."""
    store = AlertStore(alerts_db)
    try:
        with store.transaction():
            for i, states in enumerate([("pending", "firing", "resolved"), ("pending", "firing"), ("pending",)]):
                labels = {"alertname": "HighCpu", "severity": "warning", "service": SERVICES[i % 2]}
                alert_id = store.open_alert(
                    rule="HighCpu", subject=f"{SERVICES[i % 2]}-{i}", kind="metric", severity="warning", labels=labels,
                    fingerprint=f"f{i}", summary="CPU above 90%", value=95.5, threshold=90.0, now=now - 600 + i,
                )
                for j, state in enumerate(states):
                    store.add_transition(alert_id, state, now - 600 + i + 60 * j, None if state == "resolved" else 95.5)
    finally:
        store.close()


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("openapi")
    build_data(data_dir)
    settings = load_settings({"data_dir": str(data_dir)}, environ={})
    now = time.time()
    add_recent_data(settings.views_dir, now)
    add_alerts(settings.alerts_db, now)
    proc, url = start_server(data_dir, free_port())
    yield url, settings
    assert stop_process(proc, timeout=10) == 0, Path(proc.log_path).read_text()


@pytest.fixture(scope="module")
def document(api) -> dict:
    url, _ = api
    resp = requests.get(f"{url}/openapi.json", timeout=10)
    assert resp.status_code == 200 and resp.headers["Content-Type"] == "application/json"
    return resp.json()


def operations(document: dict):
    for path, item in document["paths"].items():
        for method, operation in item.items():
            yield path, method, operation


def resolve(document: dict, obj: dict) -> dict:
    while "$ref" in obj:
        section, kind, name = obj["$ref"].removeprefix("#/").split("/")
        obj = document[section][kind][name]
    return obj


# ---------------------------------------------------------------- the document


def test_every_route_is_documented_and_every_documented_route_exists(api, document):
    _, settings = api
    app = create_app(settings)
    routes = {rule.rule: rule for rule in app.url_map.iter_rules() if rule.endpoint not in openapi.UNDOCUMENTED_ENDPOINTS}
    assert set(openapi.ROUTES) == set(routes), "add the missing routes to serving.openapi.ROUTES (and drop the stale ones)"
    assert set(document["paths"]) == {FlaskPlugin.flaskpath2openapi(rule) for rule in routes}
    for rule in routes.values():
        methods = {m.lower() for m in rule.methods - {"HEAD", "OPTIONS"}}
        assert set(document["paths"][FlaskPlugin.flaskpath2openapi(rule.rule)]) == methods, rule.rule
    assert {"/", "/healthz", "/metrics", "/openapi.json", "/docs", "/api/v1/services", "/api/v1/hosts", "/api/v1/alerts",
            "/api/v1/rules"} <= set(document["paths"])


def test_the_document_is_valid_openapi_3_1(document):
    from schemathesis.specs.openapi.definitions import OPENAPI_31_VALIDATOR

    assert document["openapi"] == "3.1.0"
    OPENAPI_31_VALIDATOR.validate(document)
    for schema in document["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)
    for parameter in document["components"]["parameters"].values():
        Draft202012Validator.check_schema(parameter["schema"])


def test_every_operation_documents_its_answer_and_errors(document):
    error = {"$ref": "#/components/schemas/Error"}
    for status in ("400", "404", "405", "500", "503"):
        assert resolve(document, document["components"]["responses"][openapi.ERROR_RESPONSES[int(status)][0]]) \
            ["content"]["application/json"]["schema"] == error
    for path, _method, operation in operations(document):
        responses = operation["responses"]
        assert responses["200"]["content"], path
        assert "500" in responses, path
        if path.startswith("/api/v1/"):
            assert "400" in responses, path  # every API endpoint refuses unknown parameters
            assert list(responses["200"]["content"]) == ["application/json"], path
        if "{" in path:
            assert "404" in responses, path
        for parameter in operation.get("parameters", []):
            parameter = resolve(document, parameter)
            assert parameter["description"] and parameter["schema"], (path, parameter)


def test_documented_query_parameters_are_the_ones_each_endpoint_knows(api, document):
    """An unknown parameter is refused with the list of known ones: it must equal the documented list."""
    url, _ = api
    checked = set()
    for path, _method, operation in operations(document):
        if not path.startswith("/api/v1/"):
            continue
        parameters = [resolve(document, p) for p in operation.get("parameters", [])]
        real_path = path
        for p in parameters:
            if p["in"] == "path":
                real_path = real_path.replace("{" + p["name"] + "}", p["example"])
        resp = requests.get(f"{url}{real_path}", params={"bogus": "1"}, timeout=10)
        assert resp.status_code == 400, (path, resp.text)
        message = resp.json()["error"]["message"]
        known = re.search(r"\(known: (.*)\)", message).group(1)
        documented = sorted(p["name"] for p in parameters if p["in"] == "query")
        assert sorted(known.split(", ")) == (documented or ["none"]), path
        checked.add(path)
    assert {"/api/v1/summary", "/api/v1/services/{name}/series", "/api/v1/disks/{host}/{device}/latency"} <= checked


# ---------------------------------------------------------------- Swagger UI


def test_swagger_ui_is_served_by_the_app(api):
    url, settings = api
    page = requests.get(f"{url}/docs", timeout=10)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    links = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sorted(links) == sorted(f"/docs/{name}" for name in openapi.SWAGGER_UI_ASSETS)
    assert 'url: "/openapi.json"' in page.text and "validatorUrl: null" in page.text
    assert "http" not in page.text.replace("<!DOCTYPE html>", "")  # nothing from another origin
    for name, media_type in openapi.SWAGGER_UI_ASSETS.items():
        resp = requests.get(f"{url}/docs/{name}", timeout=10)
        assert resp.status_code == 200 and resp.headers["Content-Type"].split(";")[0] == media_type, name
        assert resp.content == (settings.web_modules_path / openapi.SWAGGER_UI_PACKAGE / name).read_bytes(), name
    for name in ("package.json", "swagger-ui.js", "..%2Fpackage.json", "swagger-initializer.js"):
        resp = requests.get(f"{url}/docs/{name}", timeout=10)
        assert resp.status_code == 404 and resp.json()["error"]["code"] == "not_found", name


def test_docs_without_swagger_ui_installed_say_so(tmp_path):
    settings = load_settings({"data_dir": str(tmp_path), "web_modules_dir": str(tmp_path / "node_modules")}, environ={})
    client = create_app(settings).test_client()
    for path in ("/docs", "/docs/swagger-ui.css"):
        resp = client.get(path)
        assert resp.status_code == 503 and resp.get_json()["error"]["code"] == "unavailable", path
        assert "make setup" in resp.get_json()["error"]["message"]
    assert client.get("/openapi.json").status_code == 200


@pytest.mark.slow
def test_swagger_ui_renders_the_document_in_a_browser(api):
    """Real chromium: Swagger UI shows every operation, no console error, nothing fetched from another origin."""
    from playwright.sync_api import sync_playwright

    url, _ = api
    requested: list[str] = []
    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=[
            "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
        ])
        try:
            page = browser.new_page()
            page.on("request", lambda request: requested.append(request.url))
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"{url}/docs")
            page.wait_for_selector(".opblock-summary-path", timeout=20_000)
            shown = page.locator(".opblock-summary-path").all_inner_texts()
            title = page.locator(".info .title").inner_text()
            (ARTIFACTS / "screenshots").mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "screenshots" / "swagger-ui.png"), full_page=True)
        finally:
            browser.close()
    assert "healthmon API" in title
    assert len(shown) == len(openapi.ROUTES)
    assert {s.replace("\u200b", "") for s in shown} == {FlaskPlugin.flaskpath2openapi(r) for r in openapi.ROUTES}
    assert errors == []
    assert requested and all(r.startswith(url + "/") for r in requested), [r for r in requested if not r.startswith(url)]


# ---------------------------------------------------------------- schemathesis


@pytest.mark.slow
def test_schemathesis_finds_no_server_error_and_no_answer_off_its_schema(api, document, tmp_path):
    """Every check but positive_data_acceptance: OpenAPI cannot say that `from` must be before `to` or how many
    points a step gives, so a request valid by the schema may rightly get 400 (documented)."""
    url, _ = api
    report_path = ARTIFACTS / "schemathesis-report.json"
    report_path.parent.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [
            str(SCHEMATHESIS), "run", f"{url}/openapi.json",
            "--checks", "all", "--exclude-checks", "positive_data_acceptance",
            "--phases", "examples,coverage,fuzzing",
            "--max-examples", "25", "--seed", str(SEED), "--workers", "2",
            "--request-timeout", "10", "--generation-database", "none", "--no-color",
            "--report", "json", "--report-json-path", str(report_path),
        ],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout[-20000:] + done.stderr[-5000:]
    report = json.loads(report_path.read_text())
    # schemathesis leaves out the operation that serves the document it tests
    expected = {f"{method.upper()} {path}" for path, method, _ in operations(document) if path != "/openapi.json"}
    assert report["operations"]["tested"] == len(expected) and report["operations"]["errored"] == 0
    # Every operation answered some generated requests with success, so their bodies were checked against the schemas too.
    accepted = {op: sum(phase["accepted"] for phase in phases.values()) for op, phases in report["valid_rates"].items()}
    assert {op for op, n in accepted.items() if n > 0} == expected, accepted
