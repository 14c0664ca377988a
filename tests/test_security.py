"""Security (issue 7): listeners on loopback, signed datagrams and replays, per-source rate limits, API limits.

The listeners are read from the running processes themselves (``psutil``: the
sockets of the process and its children).  Signing and rate limits are
checked end to end on real ``healthmon collect`` processes over real UDP
sockets: what was accepted is what landed, and every refusal is counted under
its reason.  The checks' own logic (windows, replay memory, token buckets) is
tested with injected clocks.
"""

from __future__ import annotations

import base64
import collections
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import orjson
import psutil
import pytest
import requests

from healthmon import schema, signing
from healthmon.config import ConfigError, load_settings
from healthmon.hdfs_cluster import daemon_pid
from ingest.guard import RateLimiter, ReplayMemory, Verifier
from tests.procs import free_port, start_healthmon, stop_process, wait_until
from tests.test_collector import Collector, dead_letters, landed_rows, read_counters, send_all
from tests.test_serving import END, S0, build_data

SECRET_A = "secret-of-agent-a-0123456789"
SECRET_B = "secret-of-agent-b-9876543210"
KEYS_YAML = f"agent-a: {SECRET_A}\nagent-b: '{SECRET_B}'\n"
WINDOW_S = 300.0


def health(service: str, ts: float, **changes) -> dict:
    return {"service": service, "ts": ts, "cpu_pct": 12.5, "ram_total_gb": 16, "ram_free_gb": 8, "disk_total_gb": 100,
            "disk_free_gb": 50, **changes}


def signed(message: dict, key_id: str = "agent-a", secret: str = SECRET_A) -> bytes:
    return schema.encode(message, key_id=key_id, secret=secret.encode())


def write_keys(directory: Path, text: str = KEYS_YAML) -> Path:
    path = directory / "keys.yaml"
    path.write_text(text)
    path.chmod(0o600)
    return path


def exposed_sockets(pid: int) -> list[tuple[str, str, int]]:
    """(protocol, address, port) of every socket of ``pid`` and its children that others can send to.

    That is every listening TCP socket and every UDP socket not connected to one peer (such a socket takes
    datagrams from anyone); IPv4-mapped IPv6 addresses (Java's sockets) are shown as IPv4.
    """
    top = psutil.Process(pid)
    out = []
    for proc in [top, *top.children(recursive=True)]:
        try:
            connections = proc.net_connections(kind="inet")
        except psutil.NoSuchProcess:  # a short-lived child (Spark starts some) that is gone: it listens no more
            continue
        for conn in connections:
            tcp_listener = conn.type == socket.SOCK_STREAM and conn.status == psutil.CONN_LISTEN
            open_udp = conn.type == socket.SOCK_DGRAM and not conn.raddr
            if tcp_listener or open_udp:
                out.append(("tcp" if tcp_listener else "udp", conn.laddr.ip.removeprefix("::ffff:"), conn.laddr.port))
    return sorted(set(out))


def wait_received(collector: Collector, count: int) -> dict:
    return collector.wait(lambda c: c["received"] >= count and c["landed_messages"] + c["deadletter_messages"]
                                   + c["rejected_by_reason"].get("rate_limited", 0) >= count, timeout=30)


@pytest.fixture(scope="module")
def module_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("security")


def start(directory: Path, **settings) -> Collector:
    directory.mkdir(parents=True, exist_ok=True)
    return Collector(directory, free_port(socket.SOCK_DGRAM), segment_max_seconds=0.1, **settings)


# ---------------------------------------------------------------- every listener binds 127.0.0.1 by default


@pytest.fixture(scope="module")
def default_collector(module_dir):
    collector = start(module_dir / "default")  # udp_host not set: the default
    yield collector
    assert collector.stop() == 0, collector.output()


def test_collector_listens_on_loopback_by_default(default_collector):
    assert exposed_sockets(default_collector.proc.pid) == [("udp", "127.0.0.1", default_collector.port)]


def test_api_listens_on_loopback_by_default(api_server):
    proc, url = api_server
    port = int(url.rsplit(":", 1)[1])
    assert exposed_sockets(proc.pid) == [("tcp", "127.0.0.1", port)]


@pytest.mark.slow
@pytest.mark.hdfs
def test_local_hdfs_listens_on_loopback_by_default(local_hdfs):
    settings, _env = local_hdfs  # hdfs_host not set: the default
    assert settings.hdfs_host == "127.0.0.1"
    sockets = [s for role in ("namenode", "datanode") for s in exposed_sockets(daemon_pid(settings, role))]
    assert {address for _proto, address, _port in sockets} == {"127.0.0.1"}, sockets
    configured = {settings.hdfs_rpc_port, settings.hdfs_http_port, settings.hdfs_datanode_port, settings.hdfs_datanode_http_port,
                  settings.hdfs_datanode_ipc_port}
    assert configured <= {port for _proto, _address, port in sockets}


@pytest.mark.slow
@pytest.mark.spark
def test_spark_driver_listens_on_loopback(tmp_path):
    """The speed job's Python driver, its Spark JVM (driver RPC, block manager, py4j gateway) and the py4j callback server."""
    env = {"HEALTHMON_DATA_DIR": str(tmp_path)}
    proc = start_healthmon(["speed"], env)
    try:
        state = tmp_path / "state" / "speed.json"
        wait_until(lambda: proc.poll() is None and orjson.loads(state.read_bytes()).get("state") == "streaming", 180, "speed job streaming")
        sockets = exposed_sockets(proc.pid)
        assert sockets, "the Spark driver listens somewhere"
        assert {address for _proto, address, _port in sockets} == {"127.0.0.1"}, sockets
    finally:
        assert stop_process(proc, timeout=60) == 0, Path(proc.log_path).read_text()[-3000:]


# ---------------------------------------------------------------- signing off (the default): trailers ignored


def test_signing_off_accepts_signed_datagrams_unchecked(default_collector):
    now = time.time()
    good, tampered = health("off-signed", now), health("off-tampered", now)
    bad_mac = signed(tampered)[:-8] + b"00000000"
    send_all(default_collector.port, [signed(good), bad_mac, schema.encode(health("off-plain", now))])
    counters = wait_received(default_collector, 3)
    assert (counters["accepted"], counters["rejected"], counters["signing"]) == (3, 0, {"mode": "off"})
    rows = {row["service"]: row for _path, row in landed_rows(default_collector.data_dir)}
    assert {k: v for k, v in rows["off-signed"].items() if k not in ("id", "recv_ts")} == {"type": "health", **good}


# ---------------------------------------------------------------- signing required: a real collector


@pytest.fixture(scope="module")
def required_collector(module_dir):
    keys = write_keys(module_dir)
    collector = start(module_dir / "required", signing="required", signing_keys_file=keys, signing_window_s=WINDOW_S)
    yield collector
    assert collector.stop() == 0, collector.output()


def test_signing_required_lands_only_good_signatures(required_collector):
    now = time.time()
    replay = signed(health("req-replayed-original", now))
    good = [
        signed(health("req-a", now)),
        signed(health("req-b", now), "agent-b", SECRET_B),
        signed(health("req-late", now - WINDOW_S + 30)),  # inside the window
        signed({"type": "disk_latency", "host": "req-host", "device": "nvme0n1", "op": "read", "ts": now, "interval_s": 5.0,
                "count": 1, "sum_us": 80.0, "max_us": 80.0, "buckets": [[150, 1]]}),
        schema.sign(schema.encode_seed003(health("req-seed003", now)), "agent-b", SECRET_B.encode()),
        replay,
    ]
    tampered = signed(health("req-tampered", now))
    bad = [
        ("unsigned", schema.encode(health("req-unsigned", now))),
        ("unsigned", schema.encode_seed003(health("req-unsigned-seed003", now))),
        ("bad_signature", tampered.replace(b'"cpu_pct":12.5', b'"cpu_pct":92.5')),
        ("bad_signature", signed(health("req-wrong-secret", now), "agent-a", SECRET_B)),
        ("bad_signature", schema.encode(health("req-malformed", now)) + schema.SIGNATURE_MARKER + b"agent-a 1234"),
        ("unknown_key", signed(health("req-unknown-key", now), "agent-z", SECRET_A)),
        ("stale_signature", signed(health("req-old", now - WINDOW_S - 60))),
        ("stale_signature", signed(health("req-future", now + WINDOW_S + 60))),  # within max_clock_skew_s, outside the window
        ("out_of_range", signed(health("req-cpu", now, cpu_pct=150))),  # a good signature does not make a bad message good
        ("replayed", replay),  # the very same datagram again
    ]
    send_all(required_collector.port, good + [data for _reason, data in bad])
    counters = wait_received(required_collector, len(good) + len(bad))

    assert counters["received"] == counters["accepted"] + counters["rejected"] == len(good) + len(bad)
    assert counters["accepted"] == len(good)
    assert counters["rejected_by_reason"] == dict(collections.Counter(reason for reason, _data in bad))
    assert counters["signing"]["signed_accepted"] == len(good)
    assert counters["signing"]["remembered_signatures"] == len(good)
    landed = {row.get("service") or row["host"] for _path, row in landed_rows(required_collector.data_dir)}
    assert landed == {"req-a", "req-b", "req-late", "req-host", "req-seed003", "req-replayed-original"}
    letters = sorted((row["reason"], base64.b64decode(row["raw_b64"])) for _path, row in dead_letters(required_collector.data_dir))
    assert letters == sorted(bad)  # each refused datagram, byte for byte, with its reason


def test_required_collector_checks_the_signature_before_the_message(required_collector):
    """An unsigned datagram is refused as unsigned even when it is not JSON: nothing unauthenticated is parsed."""
    before = read_counters(required_collector.data_dir)
    send_all(required_collector.port, [b"not json at all"])
    counters = wait_received(required_collector, before["received"] + 1)
    assert counters["rejected_by_reason"]["unsigned"] == before["rejected_by_reason"].get("unsigned", 0) + 1


# ---------------------------------------------------------------- signing optional


def test_signing_optional_checks_signatures_when_present(module_dir):
    keys = write_keys(module_dir)
    collector = start(module_dir / "optional", signing="optional", signing_keys_file=keys)
    try:
        now = time.time()
        good_signed = signed(health("opt-signed", now))
        datagrams = [
            schema.encode(health("opt-plain", now)),
            schema.encode_seed003(health("opt-seed003", now)),  # the original client's format, unsigned: still accepted
            good_signed,
            good_signed,  # replayed
            signed(health("opt-bad", now))[:-1] + b"x",  # bad_signature
            signed(health("opt-unknown", now), "nobody", SECRET_A),  # unknown_key
        ]
        send_all(collector.port, datagrams)
        counters = wait_received(collector, len(datagrams))
        assert counters["accepted"] == 3
        assert counters["rejected_by_reason"] == {"replayed": 1, "bad_signature": 1, "unknown_key": 1}
        assert counters["signing"]["mode"] == "optional" and counters["signing"]["signed_accepted"] == 1
        assert {row["service"] for _path, row in landed_rows(collector.data_dir)} == {"opt-plain", "opt-seed003", "opt-signed"}
    finally:
        assert collector.stop() == 0, collector.output()


@pytest.mark.parametrize(
    ("keys_text", "settings", "message"),
    [
        (None, {"signing": "required"}, "signing_keys_file is empty"),
        (None, {"signing": "optional", "signing_keys_file": "/nonexistent/keys.yaml"}, "cannot read it"),
        ("agent-a: short\n", {"signing": "required"}, "fewer than 16"),
    ],
    ids=["no-file", "missing-file", "short-secret"],
)
def test_bad_keys_file_stops_the_collector_at_start(tmp_path, keys_text, settings, message):
    if keys_text is not None:
        settings = {**settings, "signing_keys_file": write_keys(tmp_path, keys_text)}
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHMON_")}
    env.update({"HEALTHMON_DATA_DIR": str(tmp_path), "HEALTHMON_UDP_PORT": str(free_port(socket.SOCK_DGRAM))})
    env.update({f"HEALTHMON_{k.upper()}": str(v) for k, v in settings.items()})
    done = subprocess.run([sys.executable, "-m", "healthmon.cli", "collect"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "signing_keys_file" in done.stderr and message in done.stderr


# ---------------------------------------------------------------- the agent signs


def test_agent_signs_for_a_collector_that_requires_it(module_dir):
    directory = module_dir / "agent"
    collector = start(directory, signing="required", signing_keys_file=write_keys(module_dir))
    secret_file = directory / "agent-b.secret"
    secret_file.write_text(SECRET_B + "\n")
    secret_file.chmod(0o600)
    args = ["agent", "--source", "diskstats", "--interval", "0.2", "--target", f"127.0.0.1:{collector.port}",
            "--key-id", "agent-b", "--secret-file", str(secret_file)]
    agent = start_healthmon(args, {"HEALTHMON_DATA_DIR": str(directory)})
    try:
        counters = collector.wait(lambda c: c["accepted"] >= 3, timeout=60)  # host_info, then health every 0.2 s
        assert exposed_sockets(agent.pid) == []  # its one socket is connected to the collector: it listens to no one
    finally:
        assert stop_process(agent, timeout=20) == 0, Path(agent.log_path).read_text()
        collector.stop()
    counters = read_counters(directory)
    assert counters["rejected"] == 0, counters["rejected_by_reason"]
    assert counters["signing"]["signed_accepted"] == counters["accepted"] >= 3
    types = {row["type"] for _path, row in landed_rows(directory)}
    assert {"host_info", "health"} <= types


def test_mock_services_and_drives_sign_for_a_collector_that_requires_it(module_dir):
    """Every mock datagram (health, drives and the malformed scenario's broken ones) is signed with the given key."""
    directory = module_dir / "mock"
    collector = start(directory, signing="required", signing_keys_file=write_keys(module_dir))
    secret_file = directory / "agent-a.secret"
    secret_file.write_text(SECRET_A)
    secret_file.chmod(0o600)
    args = ["mock", "--services", "2", "--rate", "10", "--duration", "1", "--drives", "2", "--drive-interval", "0.5",
            "--scenario", "steady,malformed", "--malformed-share", "0.5", "--target", f"127.0.0.1:{collector.port}",
            "--key-id", "agent-a", "--secret-file", str(secret_file)]
    mock = start_healthmon(args, {"HEALTHMON_DATA_DIR": str(directory)})
    try:
        assert mock.wait(timeout=60) == 0, Path(mock.log_path).read_text()
        sent = int(re.search(r"sent (\d+) datagrams", Path(mock.log_path).read_text()).group(1))
        counters = collector.wait(lambda c: c["received"] >= sent, timeout=30)
    finally:
        collector.stop()
    reasons = counters["rejected_by_reason"]
    assert not {"unsigned", "bad_signature", "unknown_key"} & set(reasons), reasons  # every one signed, and well
    assert counters["signing"]["signed_accepted"] == counters["accepted"] > 0
    assert counters["accepted"] + counters["rejected"] == sent and counters["rejected"] > 0  # the broken ones: schema reasons


def test_agent_key_flags_go_together(tmp_path):
    done = subprocess.run([sys.executable, "-m", "healthmon.cli", "agent", "--key-id", "agent-a", "--target", "127.0.0.1:9"],
                          env={**os.environ, "HEALTHMON_DATA_DIR": str(tmp_path)}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "--key-id and --secret-file go together" in done.stderr


# ---------------------------------------------------------------- per-source rate limit: a real collector


def test_rate_limit_drops_and_counts_the_excess_per_source(module_dir):
    collector = start(module_dir / "rate", rate_limit_per_source=0.001, rate_limit_burst=50)  # no refill within the test
    try:
        now = time.time()
        first = [schema.encode(health(f"rl-one-{i:03d}", now)) for i in range(200)]
        second = [schema.encode(health(f"rl-two-{i:03d}", now)) for i in range(30)]
        send_all(collector.port, first)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:  # another source address: its own bucket
            sock.bind(("127.0.0.2", 0))
            for data in second:
                sock.sendto(data, ("127.0.0.1", collector.port))
        counters = wait_received(collector, 230)
        assert (counters["received"], counters["accepted"], counters["rejected"]) == (230, 80, 150)
        assert counters["rejected_by_reason"] == {"rate_limited": 150}
        assert counters["rate_limit"]["sources"] == 2
        assert counters["deadletter_messages"] == 0 and dead_letters(collector.data_dir) == []  # counted, not dead-lettered
        landed = sorted(row["service"] for _path, row in landed_rows(collector.data_dir))
        assert landed == sorted([f"rl-one-{i:03d}" for i in range(50)] + [f"rl-two-{i:03d}" for i in range(30)])
    finally:
        assert collector.stop() == 0, collector.output()


# ---------------------------------------------------------------- the checks' logic, with injected clocks

KEYS = {"agent-a": SECRET_A.encode(), "agent-b": SECRET_B.encode()}
T0 = 1_800_000_000.0


def verifier(mode: str = "required", window_s: float = WINDOW_S) -> Verifier:
    return Verifier(load_settings({"signing": mode, "signing_window_s": window_s}, environ={}), KEYS)


def reason(check, *args) -> str:
    with pytest.raises(schema.Rejected) as info:
        check(*args)
    assert info.value.reason in schema.REASONS
    return info.value.reason


def test_window_is_inclusive_on_both_sides():
    v = verifier()
    for offset in (-WINDOW_S, 0.0, WINDOW_S):
        assert v.parse(signed(health("w", T0 + offset)), T0, 3600)["ts"] == T0 + offset
    assert reason(v.parse, signed(health("w", T0 - WINDOW_S - 0.001)), T0, 3600) == "stale_signature"
    assert reason(v.parse, signed(health("w", T0 + WINDOW_S + 0.001)), T0, 3600) == "stale_signature"


def test_a_replay_is_caught_until_its_ts_leaves_the_window_then_it_is_stale():
    v = verifier()
    data = signed(health("r", T0))
    v.parse(data, T0, 3600)
    assert reason(v.parse, data, T0 + WINDOW_S, 3600) == "replayed"
    v.replays.expire(T0 + WINDOW_S + 2)
    assert v.replays.size == 0
    assert reason(v.parse, data, T0 + WINDOW_S + 2, 3600) == "stale_signature"


def test_same_message_under_two_keys_is_two_signatures():
    v = verifier()
    message = health("two", T0)
    v.parse(signed(message, "agent-a", SECRET_A), T0, 3600)
    v.parse(signed(message, "agent-b", SECRET_B), T0, 3600)
    assert v.signed == 2


def test_optional_and_required_differ_only_on_unsigned():
    plain = schema.encode(health("p", T0))
    assert verifier("optional").parse(plain, T0, 3600)["service"] == "p"
    assert reason(verifier("required").parse, plain, T0, 3600) == "unsigned"


def test_replay_memory_expires_seconds_that_left_the_window():
    memory = ReplayMemory(window_s=10)
    for i in range(30):
        memory.remember(i, T0 + i)
    memory.expire(T0 + 25)  # keeps the seconds from T0 + 15 on
    assert memory.size == 15 and min(memory.by_second) == int(T0) + 15


def test_full_replay_memory_forgets_the_oldest_seconds_and_refuses_what_it_no_longer_knows():
    memory = ReplayMemory(window_s=1000, capacity=10)
    for i in range(11):
        memory.remember(i, T0 + i)  # the 11th overflows: seconds are forgotten oldest first, down to 90% of capacity
    assert memory.size == 9 and memory.forgotten == 2
    assert memory.floor == T0 + 2
    assert reason(memory.remember, 0, T0 + 1) == "stale_signature"  # could be a replay of a forgotten one: refused
    assert reason(memory.remember, 5, T0 + 5) == "replayed"
    memory.remember(99, T0 + 2)  # at the floor and new: accepted


def test_token_bucket_allows_the_burst_then_the_rate():
    limiter = RateLimiter(rate=2.0, burst=5)
    assert [limiter.allow("10.0.0.1", T0) for _ in range(7)] == [True] * 5 + [False] * 2
    assert limiter.allow("10.0.0.2", T0)  # another source: its own bucket
    assert [limiter.allow("10.0.0.1", T0 + 1.0) for _ in range(3)] == [True, True, False]  # 1 s refills 2 tokens
    assert limiter.limited_by_source == {"10.0.0.1": 3}
    assert "rate limited 3 datagrams from 1 sources" in limiter.report()
    assert limiter.report() is None


def test_token_bucket_never_holds_more_than_the_burst_and_ignores_a_clock_going_back():
    limiter = RateLimiter(rate=100.0, burst=3)
    limiter.allow("s", T0)
    assert [limiter.allow("s", T0 + 3600) for _ in range(4)] == [True, True, True, False]
    assert not limiter.allow("s", T0)  # the clock stepped back: no tokens from it


def test_rate_limiter_forgets_refilled_buckets_and_caps_its_table():
    limiter = RateLimiter(rate=1.0, burst=2, max_sources=3)
    for source in ("a", "b", "c"):
        limiter.allow(source, T0)
    limiter.allow("a", T0 + 0.5)  # a is still below its burst
    limiter.sweep(T0 + 1.2)  # b and c are full again, a not yet
    assert set(limiter.buckets) == {"a"}
    for source in ("d", "e", "f"):
        limiter.allow(source, T0 + 1.2)  # the fourth source finds a full table of non-refilled buckets: it is reset
    assert limiter.resets == 1 and len(limiter.buckets) <= 3


# ---------------------------------------------------------------- key files


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "non-empty mapping"),
        ("- agent-a\n", "non-empty mapping"),
        ("agent-a: [1]\n", "must be text"),
        (f"agent-a: {'x' * 15}\n", "fewer than 16"),
        (f"'bad id': {SECRET_A}\n", "is not 1-128 characters"),
        (f"1: {SECRET_A}\n", "is not 1-128 characters"),
        ("agent-a: [unclosed\n", "not YAML"),
    ],
)
def test_bad_keys_files(tmp_path, text, message):
    with pytest.raises(ConfigError) as info:
        signing.load_keys(str(write_keys(tmp_path, text)))
    assert "signing_keys_file" in str(info.value) and message in str(info.value)


def test_keys_file_and_secret_file(tmp_path, caplog):
    assert signing.load_keys(str(write_keys(tmp_path))) == KEYS
    secret_file = tmp_path / "secret"
    secret_file.write_text(f"  {SECRET_A}\n")
    secret_file.chmod(0o644)
    assert signing.read_secret(str(secret_file)) == SECRET_A.encode()
    assert "can be read by other users" in caplog.text


# ---------------------------------------------------------------- API limits: a real server


@pytest.fixture(scope="module")
def api_server(module_dir):
    data_dir = module_dir / "api"
    build_data(data_dir)
    port = free_port()
    env = {"HEALTHMON_DATA_DIR": str(data_dir), "HEALTHMON_API_PORT": str(port), "HEALTHMON_API_MAX_RANGE_DAYS": "2",
           "HEALTHMON_API_MAX_POINTS": "10"}  # api_host not set: the default
    proc = start_healthmon(["serve"], env)
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: proc.poll() is None and requests.get(f"{url}/healthz", timeout=1).ok, 30, "API up", interval=0.05)
    yield proc, url
    assert stop_process(proc, timeout=10) == 0, Path(proc.log_path).read_text()


def api_error(url: str, path: str, **params) -> str:
    resp = requests.get(f"{url}{path}", params=params, timeout=10)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["code"] == "bad_parameter"
    return resp.json()["error"]["message"]


@pytest.mark.parametrize("path", ["/api/v1/summary", "/api/v1/services/alpha/series", "/api/v1/disks/h1/nvme0n1/latency"])
def test_query_range_is_limited(api_server, path):
    _proc, url = api_server
    step = {} if "summary" in path else {"step": "1d"}
    message = api_error(url, path, **{"from": S0, "to": S0 + 2 * 86400 + 1, **step})
    assert "api_max_range_days=2" in message and "longer than" in message
    # a 2-day range is at the limit: it passes the range check (the disk is unknown: 404, not 400)
    resp = requests.get(f"{url}{path}", params={"from": S0, "to": S0 + 2 * 86400, **step}, timeout=10)
    assert resp.status_code == (404 if "disks" in path else 200), resp.text


def test_result_size_is_limited(api_server):
    _proc, url = api_server
    ok = requests.get(f"{url}/api/v1/services/alpha/series", params={"from": S0, "to": S0 + 600, "step": "60s"}, timeout=10)
    assert ok.status_code == 200 and len(ok.json()["points"]) == 10
    message = api_error(url, "/api/v1/services/alpha/series", **{"from": S0, "to": S0 + 660, "step": "60s"})
    assert "11 points" in message and "limit of 10" in message
    assert requests.get(f"{url}/api/v1/summary", params={"from": S0, "to": END}, timeout=10).ok
