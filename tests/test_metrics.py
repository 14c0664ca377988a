"""``/metrics``: the pipeline's state in Prometheus text format, scraped from a real server."""

from __future__ import annotations

import threading

import requests
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from healthmon.config import load_settings
from healthmon.state import append_run, write_state
from healthmon.views import BATCH_VIEW, REALTIME_VIEW, ViewReader, update_view
from serving.metrics import make_registry
from serving.queries import BatchCache
from tests.procs import start_healthmon, stop_process, wait_until


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


COLLECTOR_C7 = {
    "collector_id": "c7", "received": 10, "accepted": 7, "rejected": 3, "rejected_by_reason": {"not_json": 2, "oversized": 1},
    "landed_messages": 6, "landed_segments": 4, "deadletter_messages": 3, "deadletter_segments": 2, "spooled_segments": 2,
    "shipped_segments": 1, "pending_segments": 1, "spool_segments": 1,
}


def write_known_state(data_dir) -> None:
    """Collector counters, two batch builds (ok 2.5 s, error 0.75 s), a horizon and a speed-layer commit, as the processes write them."""
    settings = load_settings({"data_dir": str(data_dir)}, environ={})
    write_state(settings.state_dir, "collector-c7", COLLECTOR_C7)
    append_run(settings.state_dir, {"status": "ok", "duration_s": 2.5})
    append_run(settings.state_dir, {"status": "error", "duration_s": 0.75})
    update_view(settings.views_dir / BATCH_VIEW, lambda con: con.execute("INSERT INTO view_meta VALUES (7200, 0, 60, 'b', 0, 0)"))
    progress = "INSERT INTO speed_progress VALUES ('health', 3, 1.0, 5, 2.0, 7200)"
    update_view(settings.views_dir / REALTIME_VIEW, lambda con: con.execute(progress))


def test_metrics_expose_the_pipeline_state(tmp_path, free_tcp_port):
    write_known_state(tmp_path)
    proc = start_healthmon(["serve"], {"HEALTHMON_DATA_DIR": str(tmp_path), "HEALTHMON_API_PORT": str(free_tcp_port)})
    api = f"http://127.0.0.1:{free_tcp_port}"
    try:
        wait_until(lambda: requests.get(f"{api}/healthz", timeout=1).ok, 30, "API up")
        requests.get(f"{api}/api/v1/summary", params={"from": "bad"}, timeout=5)
        answer = requests.get(f"{api}/metrics", timeout=5)
    finally:
        assert stop_process(proc) == 0
    assert answer.status_code == 200 and answer.headers["Content-Type"].startswith("text/plain")
    got = samples(answer.text)
    collector = (("collector", "c7"),)
    assert got[("healthmon_collector_received_total", collector)] == 10
    assert got[("healthmon_collector_accepted_total", collector)] == 7
    assert got[("healthmon_collector_rejected_total", (("collector", "c7"), ("reason", "not_json")))] == 2
    assert got[("healthmon_collector_rejected_total", (("collector", "c7"), ("reason", "oversized")))] == 1
    assert got[("healthmon_collector_spooled_segments_total", collector)] == 2
    assert got[("healthmon_collector_landed_messages_total", collector)] == 6
    assert got[("healthmon_collector_landed_segments_total", collector)] == 4
    assert got[("healthmon_collector_deadletter_segments_total", collector)] == 2
    assert got[("healthmon_collector_pending_segments", collector)] == 1
    assert got[("healthmon_batch_builds_total", (("status", "ok"),))] == 1
    assert got[("healthmon_batch_builds_total", (("status", "error"),))] == 1
    assert got[("healthmon_batch_build_duration_seconds_count", (("status", "ok"),))] == 1
    assert got[("healthmon_batch_build_duration_seconds_sum", (("status", "ok"),))] == 2.5
    assert got[("healthmon_batch_build_duration_seconds_sum", (("status", "error"),))] == 0.75
    assert got[("healthmon_batch_last_build_duration_seconds", ())] == 0.75
    assert got[("healthmon_batch_horizon_timestamp_seconds", ())] == 7200
    assert got[("healthmon_speed_lag_seconds", ())] > 1e9  # committed at epoch 1.0: long ago
    assert got[("healthmon_view_rows", (("table", "view_meta"), ("view", "batch")))] == 1
    assert got[("healthmon_view_rows", (("table", "speed_progress"), ("view", "realtime")))] == 1
    assert got[("healthmon_api_request_duration_seconds_count", (("endpoint", "/api/v1/summary"), ("status", "400")))] == 1
    assert got[("healthmon_api_request_duration_seconds_count", (("endpoint", "/healthz"), ("status", "200")))] >= 1


def test_metrics_count_the_answer_cache_lookups(tmp_path):
    """Hits, misses and waits (a thread that asked for the part another thread was computing) of the API's cache."""
    settings = load_settings({"data_dir": str(tmp_path)}, environ={})
    cache = BatchCache(max_bytes=1000)
    reader = ViewReader(settings.views_dir)  # no view files yet: the pipeline's part of the scrape reads empty stand-ins
    registry, _, _ = make_registry(settings, reader.connection, cache=cache)
    computing, go = threading.Event(), threading.Event()

    def slow() -> tuple[str, int]:
        computing.set()
        go.wait(30)
        return "value", 300

    first = threading.Thread(target=lambda: cache.get("key", slow))
    first.start()
    computing.wait(30)
    waiter = threading.Thread(target=lambda: cache.get("key", lambda: ("computed again", 300)))
    waiter.start()
    wait_until(lambda: cache.waits == 1, 30, "the second thread waits for the first")
    go.set()
    first.join(30)
    waiter.join(30)
    assert cache.get("key", lambda: ("computed again", 300)) == "value"
    try:
        got = samples(generate_latest(registry).decode())
    finally:
        reader.close_all()
    assert got[("healthmon_api_cache_lookups_total", (("result", "miss"),))] == 1
    assert got[("healthmon_api_cache_lookups_total", (("result", "wait"),))] == 1
    assert got[("healthmon_api_cache_lookups_total", (("result", "hit"),))] == 2  # the waiter's second look, and the last get
    assert got[("healthmon_api_cache_size_bytes", ())] == 300
    assert got[("healthmon_api_cache_capacity_bytes", ())] == 1000
