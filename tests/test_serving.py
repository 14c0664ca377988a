"""The HTTP API over a real server: every endpoint and the error shape.

The module's server is a real ``healthmon serve`` process on a free port over
view files built with ``healthmon.views.update_view``; a few tests that need an
injected clock or different settings use the Flask test client.  Reads during
view swaps: ``tests/test_crash.py`` (10,000 reads during 50 swaps).
"""

from __future__ import annotations

import math
import os
import re
import signal
import socket
import subprocess
import threading
from pathlib import Path

import pytest
import requests

from healthmon.config import load_settings
from healthmon.schema import HEALTH_METRICS
from healthmon.state import append_run, write_state
from serving.app import create_app
from serving.params import iso
from serving.server import ApiServer
from tests.procs import start_healthmon, stop_process, wait_until
from tests.test_merge_rule import (
    assert_series,
    assert_summary,
    expected_series,
    expected_summary,
    make_messages,
    message,
    publish_batch,
    publish_realtime,
)

S0 = 1704067200  # 2024-01-01T00:00:00Z
HOUR = 3600
HORIZON = S0 + 2 * HOUR
END = S0 + 3 * HOUR
COMMITTED_AT = END + 5.0
SERVICES = ("alpha", "beta")
MESSAGES = make_messages(S0, END, services=SERVICES, seed=3, mean_gap=20) + [message("alpha", HORIZON, 10.0)]

COLLECTOR = {
    "collector_id": "c1", "state": "running", "received": 10, "accepted": 7, "rejected": 3,
    "rejected_by_reason": {"not_json": 2, "oversized": 1}, "landed_messages": 7,
}


def build_data(data_dir: Path) -> None:
    settings = load_settings({"data_dir": str(data_dir)}, environ={})
    publish_batch(settings.views_dir, MESSAGES, HORIZON, built_at=HORIZON + 300.0)
    # Real-time rows from S0 + 1 h: the hour below the horizon is not expired yet.
    publish_realtime(settings.views_dir, MESSAGES, S0 + HOUR, progress=(42, COMMITTED_AT, 17, COMMITTED_AT - 0.5, HORIZON))
    write_state(settings.state_dir, "collector-c1", COLLECTOR)
    write_state(settings.state_dir, "speed", {"state": "running", "batches": 43})
    for i in range(12):
        append_run(settings.state_dir, {"build_id": f"b{i}", "status": "ok", "horizon": HORIZON})


def server_env(data_dir: Path, port: int) -> dict[str, str]:
    return {"HEALTHMON_DATA_DIR": str(data_dir), "HEALTHMON_API_PORT": str(port)}


def start_server(data_dir: Path, port: int, extra_env: dict[str, str] | None = None):
    proc = start_healthmon(["serve"], {**server_env(data_dir, port), **(extra_env or {})})
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.poll() is None, Path(proc.log_path).read_text()
        return requests.get(f"{url}/healthz", timeout=1).ok

    wait_until(up, 30, "API up", interval=0.05)
    return proc, url


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("serving")
    build_data(data_dir)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc, url = start_server(data_dir, port)
    yield url
    assert stop_process(proc, timeout=10) == 0, Path(proc.log_path).read_text()
    log = Path(proc.log_path).read_text()
    assert f"API listening on {url}" in log


def get(url: str, path: str, status: int = 200, **params) -> dict:
    resp = requests.get(f"{url}{path}", params=params, timeout=10)
    assert resp.status_code == status, resp.text
    assert resp.headers["Content-Type"] == "application/json"
    return resp.json()


def assert_error(resp: requests.Response, status: int, code: str) -> None:
    assert resp.status_code == status, resp.text
    assert resp.headers["Content-Type"] == "application/json"
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]


# ---------------------------------------------------------------- endpoints


def test_healthz(api, tmp_path):
    assert get(api, "/healthz") == {"status": "ok", "views": {"batch": True, "realtime": True}}
    client = create_app(load_settings({"data_dir": str(tmp_path)}, environ={})).test_client()
    assert client.get("/healthz").get_json() == {"status": "ok", "views": {"batch": False, "realtime": False}}


def test_index_serves_the_dashboard_and_its_vendored_assets(api):
    page = requests.get(f"{api}/", timeout=10)
    assert page.status_code == 200 and page.headers["Content-Type"] == "text/html; charset=utf-8"
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    javascript = ("text/javascript", "application/javascript")  # Flask's static files: the platform's MIME table picks one
    assets = {
        "/vendor/uplot/uPlot.iife.min.js": ("text/javascript",), "/vendor/uplot/uPlot.min.css": ("text/css",),
        "/static/dashboard.js": javascript, "/static/dashboard.css": ("text/css",), "/static/favicon.svg": ("image/svg+xml",),
    }
    for path, content_types in assets.items():
        assert f'="{path}"' in page.text, path
        resp = requests.get(f"{api}{path}", timeout=10)
        assert resp.status_code == 200 and resp.headers["Content-Type"].split(";")[0] in content_types, path
    assert requests.get(f"{api}/vendor/uplot/uPlot.iife.min.js", timeout=10).content.startswith(b"/*! https://github.com/leeoniya/uPlot")
    # Only the whitelisted files of node_modules, never the rest.
    outside = ("/vendor/uplot/package.json", "/vendor/uplot/uPlot.esm.js", "/vendor/uplot/..%2Fpackage.json",
               "/vendor/swagger-ui-dist/index.html")
    for path in outside:
        assert_error(requests.get(f"{api}{path}", timeout=10), 404, "not_found")


def test_services(api):
    answer = get(api, "/api/v1/services")
    assert [s["service"] for s in answer["services"]] == sorted(SERVICES)
    for s in answer["services"]:
        mine = [m for m in MESSAGES if m["service"] == s["service"]]
        assert s["count"] == len(mine)
        assert s["last_seen_ts"] == max(m["ts"] for m in mine)
        assert s["last_seen"] == iso(s["last_seen_ts"]) and s["last_seen"].endswith("Z")
        assert s["status"] == "missing"  # the data is from 2024 and the real server's clock is now


def test_summary(api):
    answer = get(api, "/api/v1/summary", **{"from": S0, "to": END})
    assert answer["from"] == "2024-01-01T00:00:00Z" and answer["to"] == "2024-01-01T03:00:00Z"
    assert answer["from_ts"] == S0 and answer["to_ts"] == END
    assert_summary(answer, expected_summary(MESSAGES, S0, END))
    shape = answer["services"][0]
    assert set(shape) == {"service", "count", "last_seen", *HEALTH_METRICS}
    assert all(set(shape[m]) == {"avg", "max"} for m in HEALTH_METRICS)


def test_summary_one_service_and_empty_range(api):
    answer = get(api, "/api/v1/summary", **{"from": S0 + 600, "to": HORIZON + 600, "service": "beta"})
    exp = expected_summary(MESSAGES, S0 + 600, HORIZON + 600)
    assert_summary(answer, {"beta": exp["beta"]})
    # A known service with no message in the range: left out, not an error.
    answer = get(api, "/api/v1/summary", **{"from": END + HOUR, "to": END + 2 * HOUR, "service": "beta"})
    assert answer["services"] == []
    assert get(api, "/api/v1/summary", **{"from": S0 - 2 * HOUR, "to": S0})["services"] == []


def test_iso_and_epoch_give_the_same_answer(api):
    epoch = get(api, "/api/v1/summary", **{"from": S0 + 1234, "to": HORIZON + 1800})
    for frm, to in [
        ("2024-01-01T00:20:34Z", "2024-01-01T02:30:00Z"),
        ("2024-01-01T00:20:34", "2024-01-01T02:30:00+00:00"),
        ("2024-01-01T02:20:34+02:00", "2024-01-01T01:30:00-01:00"),
        ("2024-01-01 00:20:34.000Z", "2024-01-01T02:30:00.000z"),
        (f"{S0 + 1234}.0", f"{HORIZON + 1800}"),
    ]:
        assert get(api, "/api/v1/summary", **{"from": frm, "to": to}) == epoch, (frm, to)
    series = get(api, "/api/v1/services/alpha/series", **{"from": S0, "to": END, "step": "5m"})
    assert get(api, "/api/v1/services/alpha/series", **{"from": "2024-01-01T00:00Z", "to": "2024-01-01T03:00Z", "step": "300"}) == series


@pytest.mark.parametrize("step", ["60s", "5m", "1h", "1d"])
def test_series(api, step):
    frm, to = S0 + 610.5, END - 10
    answer = get(api, "/api/v1/services/beta/series", **{"from": frm, "to": to, "step": step})
    assert answer["service"] == "beta" and answer["step"] == step
    assert answer["from"] == iso(frm) and answer["to"] == iso(to)
    assert_series(answer, expected_series(MESSAGES, "beta", frm, to, answer["step_s"]))
    point = answer["points"][0]
    assert set(point) == {"start", "ts", "count", *HEALTH_METRICS}
    assert all(set(point[m]) == {"avg", "min", "max"} for m in HEALTH_METRICS)


def test_series_default_step_and_empty_steps(api):
    answer = get(api, "/api/v1/services/alpha/series", **{"from": S0, "to": END})
    assert answer["step"] == "60s" and len(answer["points"]) == 180
    answer = get(api, "/api/v1/services/alpha/series", **{"from": S0, "to": S0 + 3 * 86400})
    assert answer["step"] == "1h" and len(answer["points"]) == 72  # 5m would give 864 points
    empty = [p for p in answer["points"] if p["ts"] >= END]
    assert empty and all(p["count"] == 0 and p["cpu_pct"] == {"avg": None, "min": None, "max": None} for p in empty)
    assert sum(p["count"] for p in answer["points"]) == sum(1 for m in MESSAGES if m["service"] == "alpha")


def test_pipeline(api):
    answer = get(api, "/api/v1/pipeline")
    assert answer["horizon"] == iso(HORIZON) and answer["horizon_ts"] == HORIZON
    assert answer["collectors"] == {"collector-c1": COLLECTOR}
    batch = answer["batch"]
    assert [b["build_id"] for b in batch["last_builds"]] == [f"b{i}" for i in range(11, 1, -1)]
    assert batch["built_at"] == iso(HORIZON + 300) and batch["built_at_ts"] == HORIZON + 300
    assert batch["view_rows"]["health_window"] > 0 and batch["view_rows"]["health_hour"] == 2 * len(SERVICES)
    assert batch["view_rows"]["health_day"] == len(SERVICES)
    speed = answer["speed"]
    assert speed["batch_id"] == 42 and speed["committed_at"] == iso(COMMITTED_AT)
    assert speed["max_event_ts"] == COMMITTED_AT - 0.5
    assert speed["lag_s"] > 0  # the real clock of the server process
    assert speed["state"] == {"state": "running", "batches": 43}
    assert speed["view_rows"]["health_window"] > 0


def test_pipeline_lag_and_default_range_use_the_injected_clock(api, tmp_path):
    build_data(tmp_path)
    settings = load_settings({"data_dir": str(tmp_path)}, environ={})
    client = create_app(settings, clock=lambda: COMMITTED_AT + 2.5).test_client()
    assert client.get("/api/v1/pipeline").get_json()["speed"]["lag_s"] == 2.5
    # No from/to: the last api_default_range_s (3600 s) before now.
    client = create_app(settings, clock=lambda: float(END)).test_client()
    answer = client.get("/api/v1/summary").get_json()
    assert answer["from_ts"] == END - 3600 and answer["to_ts"] == END
    assert answer == get(api, "/api/v1/summary", **{"from": END - 3600, "to": END})
    answer = client.get("/api/v1/summary", query_string={"to": S0 + 1800}).get_json()
    assert answer["from_ts"] == S0 + 1800 - 3600
    answer = client.get("/api/v1/services/alpha/series").get_json()
    assert answer["step"] == "60s" and len(answer["points"]) == 60 and answer["points"][-1]["ts"] == END - 60


def test_no_views_yet(tmp_path):
    client = create_app(load_settings({"data_dir": str(tmp_path)}, environ={})).test_client()
    assert client.get("/api/v1/services").get_json()["services"] == []
    assert client.get("/api/v1/hosts").get_json()["hosts"] == []
    assert client.get("/api/v1/summary").get_json()["services"] == []
    pipeline = client.get("/api/v1/pipeline").get_json()
    assert pipeline["horizon"] is None and pipeline["horizon_ts"] is None and pipeline["collectors"] == {}
    assert pipeline["speed"]["batch_id"] is None and pipeline["batch"]["last_builds"] == []
    assert_error(_Resp(client.get("/api/v1/services/alpha/series")), 404, "not_found")


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "path,params",
    [
        ("/api/v1/summary", {"from": "yesterday"}),
        ("/api/v1/summary", {"to": "2024-13-01T00:00:00Z"}),
        ("/api/v1/summary", {"from": "nan", "to": S0}),
        ("/api/v1/summary", {"from": "-5", "to": S0}),
        ("/api/v1/summary", {"from": ""}),
        ("/api/v1/summary", {"from": S0, "to": S0}),
        ("/api/v1/summary", {"from": END, "to": S0}),
        ("/api/v1/summary", {"from": S0, "to": END, "service": "bad name!"}),
        ("/api/v1/summary", {"form": S0}),
        ("/api/v1/services", {"x": 1}),
        ("/api/v1/services/alpha/series", {"from": S0, "to": END, "step": "7m"}),
        ("/api/v1/services/alpha/series", {"from": S0, "to": END, "step": "fast"}),
        ("/api/v1/services/alpha/series", {"from": S0, "to": END, "step": "30s"}),
        ("/api/v1/services/alpha/series", {"from": S0, "to": S0 + 10 * 86400, "step": "60s"}),
        ("/api/v1/services/alpha/series", {"from": "2024-01-01T00:00:00Z", "to": "2023-12-31T00:00:00Z"}),
    ],
)
def test_bad_parameters(api, path, params):
    assert_error(requests.get(f"{api}{path}", params=params, timeout=10), 400, "bad_parameter")


def test_too_many_points_names_the_limit(api):
    resp = requests.get(f"{api}/api/v1/services/alpha/series", params={"from": S0, "to": S0 + 10 * 86400, "step": "60s"}, timeout=10)
    assert "5000" in resp.json()["error"]["message"]


def test_step_below_the_base_window(tmp_path):
    build_data(tmp_path)
    settings = load_settings({"data_dir": str(tmp_path), "window_s": 300}, environ={})
    client = create_app(settings).test_client()
    resp = client.get("/api/v1/services/alpha/series", query_string={"from": S0, "to": END, "step": "60s"})
    assert_error(_Resp(resp), 400, "bad_parameter")
    answer = client.get("/api/v1/services/alpha/series", query_string={"from": S0, "to": END}).get_json()
    assert answer["step"] == "5m"


def test_unknown_service(api):
    assert_error(requests.get(f"{api}/api/v1/services/nobody/series", params={"from": S0, "to": END}, timeout=10), 404, "not_found")
    assert_error(requests.get(f"{api}/api/v1/services/no%20body/series", timeout=10), 404, "not_found")
    assert_error(requests.get(f"{api}/api/v1/summary", params={"from": S0, "to": END, "service": "nobody"}, timeout=10), 404, "not_found")


def test_unknown_url_and_wrong_method(api):
    for path in ("/nope", "/api/v1/nope", "/api/v1/services/alpha", "/api/v1/services/"):
        assert_error(requests.get(f"{api}{path}", timeout=10), 404, "not_found")
    for method in ("post", "put", "delete"):
        resp = getattr(requests, method)(f"{api}/api/v1/summary", timeout=10)
        assert_error(resp, 405, "method_not_allowed")
        assert "GET" in resp.headers["Allow"]


def test_internal_error_is_json(tmp_path):
    app = create_app(load_settings({"data_dir": str(tmp_path)}, environ={}))

    def boom():
        raise RuntimeError("kaput")

    app.add_url_rule("/boom", "boom", boom)
    assert_error(_Resp(app.test_client().get("/boom")), 500, "internal_error")


class _Resp:
    """A Flask test response seen through the requests.Response attributes that assert_error uses."""

    def __init__(self, resp) -> None:
        self.status_code = resp.status_code
        self.headers = resp.headers
        self.text = resp.get_data(as_text=True)
        self._json = resp.get_json()

    def json(self):
        return self._json


# ---------------------------------------------------------------- the server object, and reads during swaps


def test_api_server_in_a_thread(tmp_path, free_tcp_port):
    build_data(tmp_path)
    settings = load_settings({"data_dir": str(tmp_path), "api_port": free_tcp_port, "api_threads": 2}, environ={})
    server = ApiServer(settings)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assert server.url == f"http://127.0.0.1:{free_tcp_port}"
        assert get(server.url, "/healthz")["status"] == "ok"
    finally:
        server.stop(wait=5)
    thread.join(5)
    assert not thread.is_alive()


def _group_pids(proc: subprocess.Popen) -> list[int]:
    """The pids of the server processes a ``healthmon serve`` with ``api_processes`` > 1 started, from its log."""
    found = re.search(r"\((\d+) processes, pids ([\d, ]+)\)", Path(proc.log_path).read_text())
    assert found, Path(proc.log_path).read_text()
    return [int(pid) for pid in found.group(2).split(", ")]


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_api_processes_share_the_port_and_stop_on_sigterm(tmp_path, free_tcp_port):
    """api_processes=2: each server process answers on the one port (the other one stopped meanwhile); SIGTERM stops both."""
    build_data(tmp_path)
    proc, url = start_server(tmp_path, free_tcp_port, {"HEALTHMON_API_PROCESSES": "2"})
    try:
        pids = _group_pids(proc)
        assert len(pids) == 2
        for paused in pids:  # a stopped process cannot accept: the other one answers every new connection
            os.kill(paused, signal.SIGSTOP)
            try:
                for _ in range(3):
                    answer = requests.get(f"{url}/api/v1/summary", params={"from": S0, "to": END}, timeout=10)
                    assert answer.status_code == 200
                    assert [s["service"] for s in answer.json()["services"]] == list(SERVICES)
            finally:
                os.kill(paused, signal.SIGCONT)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0  # the limit for a stop
        assert all(_gone(pid) for pid in pids)
        assert "API stopped: all 2 servers" in Path(proc.log_path).read_text()
    finally:
        stop_process(proc)


def test_api_processes_stop_when_one_dies(tmp_path, free_tcp_port):
    """A server process that exits unasked stops the other, and ``healthmon serve`` exits 1 for its supervisor to see."""
    proc, _url = start_server(tmp_path, free_tcp_port, {"HEALTHMON_API_PROCESSES": "2"})
    try:
        killed, other = _group_pids(proc)
        os.kill(killed, signal.SIGKILL)
        assert proc.wait(10) == 1
        assert _gone(other)
        assert "without being asked" in Path(proc.log_path).read_text()
    finally:
        stop_process(proc)


# ---------------------------------------------------------------- the answer cache (serving.queries.BatchCache)


def test_cached_answers_stay_exact_across_publishes(tmp_path):
    """Answers from the cache follow every publish: a rebuilt hour below the horizon, new real-time rows, a moved horizon."""
    settings = load_settings({"data_dir": str(tmp_path)}, environ={})
    views = settings.views_dir
    frm, to = S0 + 600 + 17, END + 600  # a range that does not start on a window: the first bucket is partial
    app = create_app(settings, clock=lambda: to)
    client = app.test_client()
    cache = app.extensions["healthmon.batch_cache"]

    def answers() -> list[dict]:
        out = [client.get("/api/v1/summary", query_string={"from": frm, "to": to}).get_json()]
        for step in ("60s", "5m", "1h"):
            out.append(client.get("/api/v1/services/alpha/series", query_string={"from": frm, "to": to, "step": step}).get_json())
        return out

    def check(messages: list[dict]) -> list[dict]:
        got = answers()
        assert_summary(got[0], expected_summary(messages, frm, to))
        for answer, step in zip(got[1:], (60, 300, 3600), strict=True):
            assert_series(answer, expected_series(messages, "alpha", frm, to, step))
        return got

    publish_batch(views, MESSAGES, HORIZON)
    publish_realtime(views, MESSAGES, HORIZON)
    before = check(MESSAGES)
    hits = cache.hits
    assert check(MESSAGES) == before and cache.hits > hits  # the second time from the cache
    # A late message in an hour below the horizon (the build rebuilds that hour) and a new one in the real-time part.
    late = [message("alpha", S0 + HOUR + 30, 99.0), message("alpha", END + 5, 1.0)]
    publish_batch(views, MESSAGES + late, HORIZON)
    publish_realtime(views, MESSAGES + late, HORIZON)
    after = check(MESSAGES + late)
    assert after[0] != before[0] and after[2] != before[2]
    # The horizon moves up an hour; the real-time rows below it are expired afterwards: still exact.
    publish_batch(views, MESSAGES + late, HORIZON + HOUR)
    assert check(MESSAGES + late)[0]["horizon"] == iso(HORIZON + HOUR)
    publish_realtime(views, MESSAGES + late, HORIZON + HOUR)
    check(MESSAGES + late)


def test_new_view_files_are_prepared_before_requests_read_them(tmp_path):
    """Following the files (as the API server does): requests read the pair before until the new files are attached and the
    parts of answers that requests asked for are computed for them; then the same requests miss nothing, and stay exact."""
    settings = load_settings({"data_dir": str(tmp_path)}, environ={})
    views = settings.views_dir
    frm, to = S0 + 600 + 17, END + 600
    app = create_app(settings, clock=lambda: to)
    app.extensions["healthmon.follow_views"](None)  # no thread: this test makes the switches
    app.extensions["healthmon.demand"].budget_s = math.inf  # every kind asked is prepared, however slow the machine
    reader, cache, client = app.extensions["healthmon.reader"], app.extensions["healthmon.batch_cache"], app.test_client()

    def check(messages: list[dict]) -> list[dict]:
        got = [client.get("/api/v1/summary", query_string={"from": frm, "to": to}).get_json()]
        assert_summary(got[0], expected_summary(messages, frm, to))
        for step in (60, 300, 3600):
            got.append(client.get("/api/v1/services/alpha/series", query_string={"from": frm, "to": to, "step": step}).get_json())
            assert_series(got[-1], expected_series(messages, "alpha", frm, to, step))
        return got

    publish_batch(views, MESSAGES, HORIZON)
    publish_realtime(views, MESSAGES, HORIZON)
    before = check(MESSAGES)  # the first pair is attached by the first request: there is none before it
    assert not reader.switch_to_newest()
    late = MESSAGES + [message("alpha", END + 5, 1.0), message("beta", HORIZON + 60, 2.0)]
    publish_realtime(views, late, HORIZON)
    assert check(MESSAGES) == before  # not switched yet: the pair before, whole
    moves = (lambda: None, lambda: publish_batch(views, late, HORIZON + HOUR), lambda: publish_realtime(views, late, HORIZON + HOUR))
    for publish in moves:  # the real-time file above; a batch build that moves the horizon; the expiry after it
        publish()
        misses = cache.misses
        assert reader.switch_to_newest()
        assert cache.misses > misses  # computed for the new files before any request read them
        misses = cache.misses
        after = check(late)
        assert cache.misses == misses  # so the requests found every part computed
    assert after[0] != before[0] and after[1]["horizon"] == iso(HORIZON + HOUR)


def test_demand_prepares_the_newest_kinds_first_within_its_budget_and_forgets_old_ones():
    from serving.warming import WARM_KEEP_S, Demand

    now = [100.0]
    demand = Demand(clock=lambda: now[0], budget_s=1.0)
    done: list[str] = []

    def replay(snap, name: str, cost: float) -> None:
        done.append(name)
        now[0] += cost

    demand.note("old", replay, "old", 0.0)
    now[0] += WARM_KEEP_S - 1
    demand.note("a", replay, "a", 0.6)
    demand.note("b", replay, "b", 0.6)
    demand.note("c", replay, "c", 0.6)
    demand.note("a", replay, "a again", 0.6)  # asked again: the newest, with its newest arguments
    now[0] += 2
    assert demand.prepare(None) == 2 and done == ["a again", "c"]  # over the budget after two: "b" is left to its request
    assert "old" not in demand._slots  # not asked for WARM_KEEP_S


def test_cache_computes_a_key_once_while_others_wait_for_it():
    """Threads that miss a key being computed get that value; a failed computation lets the next one compute."""
    from serving.queries import BatchCache

    cache = BatchCache(max_bytes=1000)
    release, results, calls = threading.Event(), [], []

    def slow() -> tuple[str, int]:
        calls.append("slow")
        release.wait(10)
        return "first", 10

    def other() -> tuple[str, int]:
        calls.append("other")
        return "second", 10

    first = threading.Thread(target=lambda: results.append(cache.get("k", slow)))
    first.start()
    wait_until(lambda: "k" in cache._computing, 10, "the first computation under way", interval=0.005)
    second = threading.Thread(target=lambda: results.append(cache.get("k", other)))
    second.start()
    wait_until(lambda: cache.waits == 1, 10, "the second thread waiting", interval=0.005)
    release.set()
    first.join(10)
    second.join(10)
    assert results == ["first", "first"] and calls == ["slow"]
    assert (cache.hits, cache.misses) == (1, 1)

    def broken() -> tuple[str, int]:
        raise RuntimeError("query failed")

    with pytest.raises(RuntimeError):
        cache.get("j", broken)
    assert cache.get("j", other) == "second" and "j" not in cache._computing
