"""End to end: UDP -> collector -> landing -> speed job -> merged API, then a batch build.

Messages with known values and timestamps spread over six minutes around the
coming batch horizon are sent over real UDP to the real collector; the real
Spark streaming job and the real API serve them.  Their answers are compared
with DuckDB computed directly over the messages that were sent.  Then a real
batch build moves the horizon into the middle of those minutes, expires the
real-time rows below it, and the answers must be identical: nothing counted
twice, nothing lost.  The speed job then reads only the hours from the new
horizon on (``speed_jobs.stream.source_hours``), and a second wave of messages
above the horizon must be counted exactly too.
"""

from __future__ import annotations

import math
import random
import socket
import time

import duckdb
import orjson
import pytest
import requests

from healthmon.config import load_settings
from healthmon.landing import landing_for, raw_dir
from healthmon.schema import disk_latency_message, encode, encode_seed003
from healthmon.sketch import LatencySketch
from healthmon.state import read_state
from tests.procs import free_port, run_healthmon, start_healthmon, stop_process, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.spark]

SERVICES = ("alpha", "beta", "gamma", "TV")
METRICS = ("cpu_pct", "ram_used_pct", "disk_used_pct")


def make_messages(horizon: int, seed: int = 7) -> list[dict]:
    """Messages every ~2 s per service from horizon-180 s to horizon+180 s."""
    rng = random.Random(seed)
    messages = []
    for service in SERVICES:
        ts = horizon - 180 + rng.uniform(0, 2)
        while ts < horizon + 180:
            ram_total = rng.choice((16, 32))
            disk_total = rng.choice((512, 1024))
            messages.append(
                {
                    "service": service,
                    "ts": round(ts, 3),
                    "cpu_pct": round(rng.uniform(0, 100), 2),
                    "ram_total_gb": ram_total,
                    "ram_free_gb": round(rng.uniform(0, ram_total), 3),
                    "disk_total_gb": disk_total,
                    "disk_free_gb": round(rng.uniform(0, disk_total), 3),
                }
            )
            ts += rng.uniform(1, 3)
    # Two windows start exactly on the horizon.
    messages[0]["ts"] = float(horizon)
    messages[-1]["ts"] = float(horizon)
    return messages


DEVICES = (("host-a", "nvme0n1"), ("host-b", "nvme1n1"))


def make_latency_messages(horizon: int, seed: int = 11) -> list[dict]:
    """disk_latency messages every 5 s per device and op over the same six minutes, from real sketches."""
    rng = random.Random(seed)
    messages = []
    for host, device in DEVICES:
        for op, scale in (("read", 80.0), ("write", 150.0)):
            for end in range(horizon - 175, horizon + 180, 5):
                latencies = LatencySketch()
                for _ in range(rng.randint(20, 60)):
                    latencies.add(rng.lognormvariate(math.log(scale), 0.6))
                messages.append(disk_latency_message(host, device, op, float(end), 5.0, latencies, source="mock"))
    return messages


def assert_latency_matches(api: str, messages: list[dict], start: int, end: int, step: int = 60) -> None:
    """Count, mean, max and p50/p95/p99 per step equal those of the merged sketches that were sent."""
    for host, device in DEVICES:
        for op in ("read", "write"):
            answer = requests.get(f"{api}/api/v1/disks/{host}/{device}/latency",
                                  params={"from": start, "to": end, "step": step, "op": op}, timeout=10).json()
            for point in answer["points"]:
                sent = [m for m in messages if m["host"] == host and m["device"] == device and m["op"] == op
                        and point["ts"] <= m["ts"] // 60 * 60 < point["ts"] + step and start <= m["ts"] < end]
                merged = LatencySketch()
                for m in sent:
                    merged.merge(LatencySketch.from_pairs(m["buckets"], m["sum_us"], m["max_us"]))
                assert point["count"] == merged.count, (host, device, op, point["ts"])
                if not sent:
                    continue
                assert close(point["mean_us"], merged.sum_us / merged.count)
                assert point["max_us"] == merged.max_us
                for name, q in (("p50_us", 0.5), ("p95_us", 0.95), ("p99_us", 0.99)):
                    assert point[name] == merged.quantile(q), (name, host, device, op, point["ts"])


def expected(messages: list[dict], step: int, start: int, end: int):
    """Summary and per-step series computed by DuckDB directly over the sent messages."""
    con = duckdb.connect()
    con.execute(
        "CREATE TABLE m (service VARCHAR, ts DOUBLE, cpu_pct DOUBLE, ram_total_gb DOUBLE, ram_free_gb DOUBLE,"
        " disk_total_gb DOUBLE, disk_free_gb DOUBLE)"
    )
    con.executemany(
        "INSERT INTO m VALUES (?, ?, ?, ?, ?, ?, ?)",
        [[m[k] for k in ("service", "ts", "cpu_pct", "ram_total_gb", "ram_free_gb", "disk_total_gb", "disk_free_gb")] for m in messages],
    )
    measures = (
        "SELECT service, ts, cpu_pct, (ram_total_gb - ram_free_gb) / ram_total_gb * 100 AS ram_used_pct,"
        f" (disk_total_gb - disk_free_gb) / disk_total_gb * 100 AS disk_used_pct FROM m WHERE ts >= {start} AND ts < {end}"
    )
    aggs = ", ".join(f"avg({m}), min({m}), max({m})" for m in METRICS)
    summary = {
        row[0]: row[1:] for row in con.execute(f"SELECT service, count(*), {aggs} FROM ({measures}) GROUP BY service").fetchall()
    }
    series = {
        (row[0], int(row[1])): row[2:]
        for row in con.execute(
            f"SELECT service, floor(ts / {step}) * {step} AS bucket, count(*), {aggs} FROM ({measures}) GROUP BY ALL"
        ).fetchall()
    }
    return summary, series


def close(a, b) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


def assert_matches(api: str, messages: list[dict], start: int, end: int) -> None:
    summary, series = expected(messages, 60, start, end)
    answer = requests.get(f"{api}/api/v1/summary", params={"from": start, "to": end}, timeout=10).json()
    got = {row["service"]: row for row in answer["services"]}
    assert set(got) == set(summary)
    for service, exp in summary.items():
        row = got[service]
        assert row["count"] == exp[0], service
        for i, metric in enumerate(METRICS):
            assert close(row[metric]["avg"], exp[1 + 3 * i]), (service, metric)
            assert close(row[metric]["max"], exp[3 + 3 * i]), (service, metric)
    for service in SERVICES:
        answer = requests.get(
            f"{api}/api/v1/services/{service}/series", params={"from": start, "to": end, "step": "60s"}, timeout=10
        ).json()
        points = {p["ts"]: p for p in answer["points"]}
        assert len(points) == (end - start) // 60
        for bucket, point in points.items():
            exp = series.get((service, bucket))
            if exp is None:
                assert point["count"] == 0
                continue
            assert point["count"] == exp[0], (service, bucket)
            for i, metric in enumerate(METRICS):
                assert close(point[metric]["avg"], exp[1 + 3 * i])
                assert close(point[metric]["min"], exp[2 + 3 * i])
                assert close(point[metric]["max"], exp[3 + 3 * i])


def test_udp_to_merged_api_exact_across_a_batch_build(tmp_path):
    check_pipeline(tmp_path, {})


@pytest.mark.hdfs
def test_the_same_with_the_real_hdfs_as_landing_store(tmp_path, local_hdfs):
    _cluster, hdfs_env = local_hdfs
    check_pipeline(tmp_path, {**hdfs_env, "HEALTHMON_LANDING": f"{hdfs_env['HEALTHMON_LANDING']}-e2e"})


def landed_ids(env: dict[str, str]) -> list[str]:
    """Ids of every landed raw line, read through the landing store itself (WebHDFS for hdfs://)."""
    store = landing_for(load_settings(environ=env))
    return [orjson.loads(line)["id"] for f in store.list_files(raw_dir("health")) for line in store.read(f.path).splitlines()]


def check_pipeline(tmp_path, extra_env: dict[str, str]) -> None:
    now = time.time()
    horizon = int(now // 3600) * 3600 - 3600
    # Put 'now - lateness' in the middle of the hour after `horizon`, so the build's horizon is `horizon`.
    lateness = now - (horizon + 1800)
    udp_port, api_port = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_STREAM)
    env = {
        "HEALTHMON_DATA_DIR": str(tmp_path / "var"),
        "HEALTHMON_UDP_PORT": str(udp_port),
        "HEALTHMON_API_PORT": str(api_port),
        "HEALTHMON_SEGMENT_MAX_SECONDS": "0.2",
        "HEALTHMON_BATCH_LATENESS_S": str(lateness),
        **extra_env,
    }
    api = f"http://127.0.0.1:{api_port}"
    procs = [start_healthmon(["collect"], env), start_healthmon(["speed"], env), start_healthmon(["serve"], env)]
    try:
        wait_until(lambda: requests.get(f"{api}/healthz", timeout=1).ok, 30, "API up")
        # The streaming query starts over an empty landing store: its schema must not change when data arrives.
        wait_until(lambda: (read_state(tmp_path / "var" / "state", "speed") or {}).get("state") == "streaming", 120, "speed job")
        messages = make_messages(horizon)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for i, message in enumerate(messages):
            # Every 5th message in the original client's format.
            sock.sendto(encode_seed003(message) if i % 5 == 0 else encode({"type": "health", **message}), ("127.0.0.1", udp_port))
            if i % 200 == 0:
                time.sleep(0.01)
        latency = make_latency_messages(horizon)
        for i, message in enumerate(latency):
            sock.sendto(encode(message), ("127.0.0.1", udp_port))
            if i % 200 == 0:
                time.sleep(0.01)
        start, end = horizon - 3600, horizon + 3600

        def merged_count() -> int:
            answer = requests.get(f"{api}/api/v1/summary", params={"from": start, "to": end}, timeout=5).json()
            return sum(row["count"] for row in answer["services"])

        def latency_count() -> int:
            disks = requests.get(f"{api}/api/v1/disks", timeout=5).json()["disks"]
            return sum(d["count"] for d in disks)

        wait_until(lambda: merged_count() == len(messages), 120, "all messages visible in the merged view")
        wait_until(lambda: latency_count() == sum(m["count"] for m in latency), 120, "all drive latency visible")
        pipeline = requests.get(f"{api}/api/v1/pipeline", timeout=5).json()
        (collector,) = pipeline["collectors"].values()
        assert collector["accepted"] == len(messages) + len(latency) and collector["rejected"] == 0
        ids = landed_ids(env)
        assert len(ids) == len(set(ids)) == len(messages)
        assert pipeline["horizon_ts"] in (None, 0)
        # Six whole minutes around the horizon, and a wide range.
        assert_matches(api, messages, horizon - 180, horizon + 180)
        assert_matches(api, messages, start, end)
        assert_latency_matches(api, latency, horizon - 180, horizon + 180)

        run_healthmon(["batch"], env, timeout=300)
        pipeline = requests.get(f"{api}/api/v1/pipeline", timeout=5).json()
        assert pipeline["horizon_ts"] == horizon
        last = pipeline["batch"]["last_builds"][0]
        assert last["status"] == "ok" and last["hours_rebuilt"] == 2  # one hour of each message type
        assert last["expired_realtime_rows"] > 0
        master = landing_for(load_settings(environ=env)).list_files("master/type=health")
        assert master and all(f.path.endswith(".parquet") for f in master)  # compacted in the landing store itself
        assert merged_count() == len(messages)
        assert latency_count() == sum(m["count"] for m in latency)
        assert_matches(api, messages, horizon - 180, horizon + 180)
        assert_matches(api, messages, start, end)
        assert_latency_matches(api, latency, horizon - 180, horizon + 180)
        assert_latency_matches(api, latency, horizon - 3600, horizon + 3600, step=3600)  # batch hour rollups below the horizon

        # The streams start again over the hours from the horizon on, from their checkpoints: what they read
        # before is not read again, and what lands now is read once.
        def reading_from() -> list:
            streams = (read_state(tmp_path / "var" / "state", "speed") or {}).get("streams", {})
            return [streams.get(msg_type, {}).get("reading_from_ts") for msg_type in ("health", "disk_latency")]

        wait_until(lambda: reading_from() == [horizon, horizon], 60, "the streams read the hours from the horizon on")
        later = make_messages(horizon + 540, seed=8)  # from horizon + 360 s on
        for i, message in enumerate(later):
            sock.sendto(encode({"type": "health", **message}), ("127.0.0.1", udp_port))
            if i % 200 == 0:
                time.sleep(0.01)
        wait_until(lambda: merged_count() == len(messages) + len(later), 120, "the second wave visible in the merged view")
        assert_matches(api, messages + later, start, end)
        assert latency_count() == sum(m["count"] for m in latency)
    finally:
        for proc in procs:
            stop_process(proc)
