"""``/metrics`` as real Prometheus tools see it: ``promtool check metrics``, and a real Prometheus that scrapes it.

One real ``healthmon serve`` over state files with known counters (those of
``tests/test_metrics.py``).  Debian's ``/usr/bin/promtool`` lints a scrape;
Debian's ``/usr/bin/prometheus`` (config and TSDB in a temporary directory,
listening on 127.0.0.1 only) scrapes the server every second, and its query
API must answer the known values.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import requests

from tests.procs import free_port, start_healthmon, stop_process, wait_until
from tests.test_metrics import COLLECTOR_C7, write_known_state

PROMTOOL = "/usr/bin/promtool"
PROMETHEUS = "/usr/bin/prometheus"


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("prometheus-target")
    write_known_state(data_dir)
    port = free_port()
    proc = start_healthmon(["serve"], {"HEALTHMON_DATA_DIR": str(data_dir), "HEALTHMON_API_PORT": str(port)})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: requests.get(f"{url}/healthz", timeout=1).ok, 30, "API up", interval=0.05)
        # A 400 and a 200, so the request-latency histogram has samples with both statuses.
        requests.get(f"{url}/api/v1/summary", params={"from": "bad"}, timeout=5)
        requests.get(f"{url}/api/v1/summary", timeout=5)
        yield url
    finally:
        assert stop_process(proc) == 0, Path(proc.log_path).read_text()


def test_promtool_finds_nothing_to_complain_about(api):
    text = requests.get(f"{api}/metrics", timeout=5).text
    for family in ("healthmon_collector_rejected_total", "healthmon_batch_build_duration_seconds", "healthmon_speed_lag_seconds",
                   "healthmon_view_rows", "healthmon_api_request_duration_seconds"):
        assert f"# TYPE {family.removesuffix('_total')}" in text or f"# TYPE {family}" in text, family
    done = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and done.stdout == "" and done.stderr == "", (done.stdout, done.stderr)


def query(prometheus: str, expr: str) -> list[dict]:
    answer = requests.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=5).json()
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


@pytest.mark.slow
def test_a_real_prometheus_scrapes_and_answers_queries(api, tmp_path):
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n"
        f"  - job_name: healthmon\n    static_configs:\n      - targets: ['{api.removeprefix('http://')}']\n"
    )
    log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    prometheus = f"http://127.0.0.1:{port}"
    rejected = 'healthmon_collector_rejected_total{job="healthmon", collector="c7", reason="not_json"}'
    try:
        wait_until(lambda: proc.poll() is None and query(prometheus, rejected), 25, "Prometheus has scraped healthmon", interval=0.25)
        [sample] = query(prometheus, rejected)
        assert float(sample["value"][1]) == COLLECTOR_C7["rejected_by_reason"]["not_json"]
        assert float(query(prometheus, 'up{job="healthmon"}')[0]["value"][1]) == 1
        [total] = query(prometheus, "sum(healthmon_collector_received_total)")
        assert float(total["value"][1]) == COLLECTOR_C7["received"]
        [took] = query(prometheus, 'healthmon_batch_build_duration_seconds_sum{status="ok"}')
        assert float(took["value"][1]) == 2.5
        # Prometheus's own scrapes are API requests too: the latency histogram counts them.
        wait_until(lambda: query(prometheus, 'healthmon_api_request_duration_seconds_count{endpoint="/metrics", status="200"} >= 2'),
                   10, "two scrapes counted", interval=0.25)
        targets = requests.get(f"{prometheus}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
        assert [(t["health"], t["lastError"]) for t in targets] == [("up", "")]
    finally:
        rc = stop_process(proc, timeout=15)
        log.close()
    assert rc == 0, (tmp_path / "prometheus.log").read_text()
