"""The UDP collector as a real process: real sockets, real files, real signals."""

from __future__ import annotations

import abc
import base64
import collections
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from healthmon import schema
from healthmon.landing import hour_partition

REPO = Path(__file__).resolve().parents[1]
STATE_NAME = "collector-c1.json"


def collector_env(data_dir: Path, port: int, **settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHMON_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update({"HEALTHMON_DATA_DIR": str(data_dir), "HEALTHMON_UDP_PORT": str(port), "HEALTHMON_STATS_INTERVAL_S": "0.1"})
    env.update({f"HEALTHMON_{k.upper()}": str(v) for k, v in settings.items()})
    return env


def read_counters(data_dir: Path) -> dict | None:
    try:
        return orjson.loads((data_dir / "state" / STATE_NAME).read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return None


class CollectProcess(abc.ABC):
    """``healthmon collect`` in a subprocess, waited for until ``started()`` says it listens; ``read()`` gives its counters."""

    def __init__(self, data_dir: Path, port: int, **settings) -> None:
        self.data_dir = data_dir
        self.port = port
        self.log_path = data_dir / "collector.log"
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "healthmon.cli", "collect"],
            env=collector_env(data_dir, port, **settings), cwd=data_dir, stdout=self.log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while not self.started():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"{type(self).__name__} did not start:\n{self.output()}")
            time.sleep(0.05)

    @abc.abstractmethod
    def started(self) -> bool:
        """Whether the process listens (and every receiver of it does)."""

    @abc.abstractmethod
    def read(self):
        """Its counters as the state files show them now (None or empty before the first write)."""

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text(errors="replace")

    def wait(self, predicate, timeout: float = 10):
        """The counters, once ``predicate`` holds for them."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            counters = self.read()
            if counters and predicate(counters):
                return counters
            time.sleep(0.05)
        raise AssertionError(f"counters never matched: {self.read()}")

    def stop(self, sig=signal.SIGTERM, timeout: float = 10) -> int:
        """Send ``sig`` (unless None) and wait for the exit status."""
        if sig is not None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.log.close()

    def kill(self) -> None:
        """SIGKILL the process if it still runs (the end of a test that failed half-way)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


class Collector(CollectProcess):
    """One receiver process (the default ``collector_processes=1``)."""

    def started(self) -> bool:
        counters = self.read()
        if counters and counters.get("pid") == self.proc.pid and counters.get("state") == "running":
            self.run_id = counters["run_id"]
            return True
        return False

    def read(self) -> dict | None:
        return read_counters(self.data_dir)


def kill_after_test(kind):
    """A fixture factory: ``start(...)`` starts ``kind`` on the test's port; whatever is left running is killed after."""

    @pytest.fixture
    def start(data_dir, free_udp_port):
        started: list[CollectProcess] = []

        def start_one(*args, **settings) -> CollectProcess:
            started.append(kind(data_dir, free_udp_port, *args, **settings))
            return started[-1]

        yield start_one
        for process in started:
            process.kill()

    return start


start_collector = kill_after_test(Collector)


def send_all(port: int, datagrams: list[bytes]) -> int:
    """Send over a real UDP socket, pausing now and then so loopback never drops; the source port."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        for i, data in enumerate(datagrams, 1):
            sock.sendto(data, ("127.0.0.1", port))
            if i % 100 == 0:
                time.sleep(0.002)
        return sock.getsockname()[1]


def published(root: Path) -> list[Path]:
    """Published files under ``root`` (hidden names skipped, as every reader does)."""
    return sorted(p for p in root.rglob("*") if p.is_file() and not any(part.startswith(("_", ".")) for part in p.relative_to(root).parts))


def hidden_files(data_dir: Path) -> list[Path]:
    return [p for p in data_dir.rglob("*") if p.name.startswith(("_", ".")) or p.name.endswith(".tmp")]


def landed_rows(data_dir: Path) -> list[tuple[Path, dict]]:
    return [(path, orjson.loads(line)) for path in published(data_dir / "landing" / "raw")
            for line in path.read_bytes().splitlines()]


def dead_letters(data_dir: Path) -> list[tuple[Path, dict]]:
    return [(path, orjson.loads(line)) for path in published(data_dir / "landing" / "deadletter")
            for line in path.read_bytes().splitlines()]


# ---------------------------------------------------------------- what the tests send


def valid_messages(now: float, count: int) -> list[dict]:
    """``count`` canonical health messages with unique services, some an hour old, some with host/net."""
    rng = random.Random(7)
    out = []
    for i in range(count):
        ram_total = rng.choice([8, 16, 32.0, 64])
        disk_total = rng.choice([256, 512.5, 1024])
        msg = {
            "service": f"svc-{i:04d}",
            "ts": round(now - rng.uniform(0, 5) - (3600 if i % 5 == 0 else 0), 6),
            "cpu_pct": round(rng.uniform(0, 100), 3),
            "ram_total_gb": ram_total,
            "ram_free_gb": round(rng.uniform(0, ram_total), 3),
            "disk_total_gb": disk_total,
            "disk_free_gb": round(rng.uniform(0, disk_total), 3),
        }
        if i % 3 == 0:
            msg["host"] = f"host-{i % 7}"
        if i % 4 == 0:
            msg["net"] = {"eth0": {"rx_bps": rng.randint(0, 10**9), "tx_bps": round(rng.uniform(0, 1e6), 2)}}
        out.append(msg)
    return out


def invalid_datagrams(now: float, per_kind: int) -> list[tuple[str, bytes]]:
    """(expected reason, datagram): several of each kind, every datagram unique."""
    base = {"service": "bad", "ts": now, "cpu_pct": 1, "ram_total_gb": 2, "ram_free_gb": 1, "disk_total_gb": 2, "disk_free_gb": 1}
    out = []
    for i in range(per_kind):
        out += [
            ("oversized", b'{"service": "big", "pad": "' + b"x" * (16384 + i) + b'"}'),
            ("oversized", bytes([i % 256]) * 30000),
            ("not_utf8", b'{"service": "\xff\xfe", "i": %d}' % i),
            ("not_json", b"garbage %d" % i),
            ("not_object", b"[%d]" % i),
            ("unknown_type", orjson.dumps({**base, "type": f"kind{i}"})),
            ("missing_field", orjson.dumps({k: v for k, v in base.items() if k != "cpu_pct"} | {"i": i})),
            ("wrong_type", orjson.dumps({**base, "cpu_pct": str(i)})),
            ("out_of_range", orjson.dumps({**base, "cpu_pct": 101 + i})),
            ("bad_name", orjson.dumps({**base, "service": f"bad name {i}"})),
            ("bad_timestamp", orjson.dumps({**base, "ts": f"not a time {i}"})),
            ("bad_timestamp", orjson.dumps({**base, "ts": now + 86400 + i})),
            ("free_exceeds_total", orjson.dumps({**base, "ram_free_gb": 3 + i})),
        ]
    return out


def expected_row(message: dict) -> dict:
    return {"type": "health", **message}


# ---------------------------------------------------------------- tests


def test_lands_valid_and_deadletters_invalid(start_collector, data_dir):
    collector = start_collector(segment_max_seconds=0.2)
    now = time.time()
    valid = valid_messages(now, 400)
    # the original client's format has no host and no net
    seed003 = [{k: v for k, v in m.items() if k not in ("host", "net")} | {"service": f"seed-{i:03d}"}
               for i, m in enumerate(valid_messages(now, 30))]
    invalid = invalid_datagrams(now, 3)
    sends = [schema.encode(m) for m in valid] + [schema.encode_seed003(m) for m in seed003] + [d for _, d in invalid]
    random.Random(1).shuffle(sends)
    k, m = len(valid) + len(seed003), len(invalid)

    first = send_all(collector.port, sends[: len(sends) // 2])
    collector.wait(lambda c: c["landed_messages"] + c["deadletter_messages"] == len(sends) // 2)  # by the timer
    second = send_all(collector.port, sends[len(sends) // 2:])  # these are published at SIGTERM
    assert collector.stop() == 0, collector.output()
    assert f"collector listening on udp://127.0.0.1:{collector.port}" in collector.output()

    # exactly K landed lines, unique ids of this run counting from 0, values as sent, in their hour partition
    rows = landed_rows(data_dir)
    assert len(rows) == k
    ids = [row["id"] for _, row in rows]
    assert len(set(ids)) == k
    prefix = f"c1-{collector.run_id}-"
    assert sorted(int(i.removeprefix(prefix)) for i in ids) == list(range(k))
    by_service = {row["service"]: (path, row) for path, row in rows}
    for msg in valid:
        path, row = by_service[msg["service"]]
        assert {key: value for key, value in row.items() if key not in ("id", "recv_ts")} == expected_row(msg)
        assert f"raw/type=health/{hour_partition(msg['ts'])}/" in path.as_posix()
        assert now - 1 < row["recv_ts"] < time.time()
    for msg in seed003:
        _, row = by_service[msg["service"]]
        for key, value in msg.items():
            assert row[key] == pytest.approx(value, abs=1e-6), key

    # exactly M dead letters, with the right reason and the exact bytes
    letters = dead_letters(data_dir)
    assert len(letters) == m
    expected = collections.Counter(invalid)
    got = collections.Counter((row["reason"], base64.b64decode(row["raw_b64"])) for _, row in letters)
    assert got == expected
    for path, row in letters:
        assert row["source"] in (f"127.0.0.1:{first}", f"127.0.0.1:{second}")
        assert set(row) == {"recv_ts", "source", "reason", "detail", "raw_b64"}
        assert f"deadletter/{hour_partition(row['recv_ts'])}/" in path.as_posix()

    # segment names: <collector>-<run>-<seq>, one counter for raw and dead letters
    names = [p.name for p in published(data_dir / "landing")]
    assert all(re.fullmatch(rf"c1-{collector.run_id}-\d{{6}}\.jsonl", n) for n in names), names
    assert sorted(int(n[-12:-6]) for n in names) == list(range(len(names)))

    counters = read_counters(data_dir)
    reasons = collections.Counter(reason for reason, _ in invalid)
    assert counters["received"] == k + m, "the kernel dropped datagrams (or the collector lost some)"
    assert (counters["accepted"], counters["rejected"]) == (k, m)
    assert counters["rejected_by_reason"] == dict(reasons)
    assert counters["landed_messages"] == k and counters["deadletter_messages"] == m
    assert counters["landed_segments"] + counters["deadletter_segments"] == len(names)
    assert counters["pending_segments"] == 0 and counters["open_segments"] == 0
    assert counters["state"] == "stopped"
    assert counters["started_at"] <= counters["updated_at"]
    assert hidden_files(data_dir) == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_signal_publishes_open_segments(start_collector, data_dir, sig):
    collector = start_collector(segment_max_seconds=30)
    now = time.time()
    messages = valid_messages(now, 10)
    send_all(collector.port, [schema.encode(m) for m in messages] + [b"nope", b"[]"])
    counters = collector.wait(lambda c: c["received"] == 12)
    assert counters["landed_messages"] == 0 and counters["open_segments"] >= 2
    assert published(data_dir / "landing") == []

    assert collector.stop(sig) == 0, collector.output()
    assert sorted(row["service"] for _, row in landed_rows(data_dir)) == [m["service"] for m in messages]
    assert sorted(row["reason"] for _, row in dead_letters(data_dir)) == ["not_json", "not_object"]
    counters = read_counters(data_dir)
    assert (counters["received"], counters["accepted"], counters["rejected"]) == (12, 10, 2)
    assert counters["landed_messages"] == 10 and counters["deadletter_messages"] == 2
    assert counters["state"] == "stopped"
    assert hidden_files(data_dir) == []


def test_segments_are_published_while_running(start_collector, data_dir):
    collector = start_collector(segment_max_seconds=0.2)
    send_all(collector.port, [schema.encode(m) for m in valid_messages(time.time(), 5)])
    counters = collector.wait(lambda c: c["landed_messages"] == 5, timeout=5)
    assert counters["pending_segments"] == 0
    assert len(landed_rows(data_dir)) == 5
    # a second batch goes to new segments; nothing already published changes
    before = {p: p.read_bytes() for p in published(data_dir / "landing")}
    send_all(collector.port, [schema.encode(m) for m in valid_messages(time.time(), 7)])
    collector.wait(lambda c: c["landed_messages"] == 12, timeout=5)
    assert all(p.read_bytes() == data for p, data in before.items())
    assert collector.stop() == 0


def test_segment_max_bytes_closes_segments(start_collector, data_dir):
    collector = start_collector(segment_max_seconds=30, segment_max_bytes=4096)
    messages = [{**m, "ts": time.time()} for m in valid_messages(time.time(), 100)]  # one hour partition
    send_all(collector.port, [schema.encode(m) for m in messages])
    collector.wait(lambda c: c["landed_segments"] >= 3, timeout=5)  # ~22 KB of lines, 30 s timer
    assert collector.stop() == 0
    files = published(data_dir / "landing" / "raw")
    assert len(files) >= 5
    assert all(f.stat().st_size < 4096 + 400 for f in files)
    assert len(landed_rows(data_dir)) == 100


@pytest.mark.parametrize("value", ["notanumber", "70000", "-1"])
def test_bad_udp_port_setting_fails_fast(data_dir, value):
    env = collector_env(data_dir, 0)
    env["HEALTHMON_UDP_PORT"] = value
    proc = subprocess.run([sys.executable, "-m", "healthmon.cli", "collect"], env=env, cwd=data_dir,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0
    assert "udp_port" in proc.stderr


def test_port_in_use_fails(data_dir, free_udp_port):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", free_udp_port))
        proc = subprocess.run([sys.executable, "-m", "healthmon.cli", "collect"], env=collector_env(data_dir, free_udp_port),
                              cwd=data_dir, capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0
    assert f"udp://127.0.0.1:{free_udp_port}" in proc.stderr


def spool_files(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "spool").rglob("*.segment"))


def test_unreachable_store_spools_and_ships_in_order_when_back(start_collector, data_dir):
    """A publish that fails sends the segment to the local spool; it ships, in order, once the store is back."""
    blocker = data_dir / "landing" / "raw"  # a file where the raw/ directory should be: every raw publish fails
    blocker.parent.mkdir(parents=True)
    blocker.write_bytes(b"")
    collector = start_collector(segment_max_seconds=0.2)
    first = valid_messages(time.time(), 20)
    send_all(collector.port, [schema.encode(m) for m in first] + [b"bad"])
    counters = collector.wait(lambda c: c["spooled_segments"] >= 2 and c["received"] == 21 and c["open_segments"] == 0)
    assert counters["pending_segments"] == counters["spool_segments"] >= 2 and counters["landed_messages"] == 0
    # The dead-letter segment's store path works, but it waits in the spool behind the raw ones (order is kept).
    assert counters["deadletter_messages"] == 0
    assert len(spool_files(data_dir)) == counters["spool_segments"]
    assert "publish" in collector.output() and "failed" in collector.output()
    second = valid_messages(time.time(), 10)
    send_all(collector.port, [schema.encode(m) for m in second])
    collector.wait(lambda c: c["received"] == 31 and c["open_segments"] == 0 and c["pending_segments"] >= 3)

    blocker.unlink()  # the store is back
    counters = collector.wait(lambda c: c["pending_segments"] == 0, timeout=20)
    assert counters["shipped_segments"] == counters["spooled_segments"]
    assert counters["landed_messages"] == 30 and counters["deadletter_messages"] == 1 and counters["spool_segments"] == 0
    assert spool_files(data_dir) == []
    assert collector.stop() == 0
    rows = [row for _, row in landed_rows(data_dir)]
    assert sorted(row["id"] for row in rows) == sorted({row["id"] for row in rows})  # nothing shipped twice
    assert sorted(row["service"] for row in rows) == sorted(m["service"] for m in first + second)
    assert hidden_files(data_dir) == []


def test_stop_with_the_store_away_keeps_the_spool_and_the_next_start_ships_it(start_collector, data_dir):
    blocker = data_dir / "landing" / "raw"
    blocker.parent.mkdir(parents=True)
    blocker.write_bytes(b"")
    collector = start_collector(segment_max_seconds=0.2)
    messages = valid_messages(time.time(), 5)
    send_all(collector.port, [schema.encode(m) for m in messages])
    collector.wait(lambda c: c["spooled_segments"] >= 1 and c["received"] == 5 and c["open_segments"] == 0)
    assert collector.stop(signal.SIGTERM, timeout=20) == 0  # stops within the grace, does not wait for the store
    assert "the next start ships them" in collector.output()
    assert read_counters(data_dir)["spool_segments"] >= 1 and spool_files(data_dir)
    blocker.unlink()
    again = start_collector(segment_max_seconds=0.2)
    again.wait(lambda c: c["pending_segments"] == 0 and c["shipped_segments"] >= 1)
    assert again.stop() == 0
    assert sorted(row["service"] for _, row in landed_rows(data_dir)) == sorted(m["service"] for m in messages)
    assert spool_files(data_dir) == []


# ---------------------------------------------------------------- the fast path and the batch receiver


def fast_path_cases(now: float) -> list[bytes]:
    """Canonical health datagrams and near misses of every kind the fast path must leave to the schema."""
    rng = random.Random(11)
    base = valid_messages(now, 60)
    out = [schema.encode(m) for m in base]
    for m in base[:30]:
        field = rng.choice(list(m))
        mutants = [
            {k: v for k, v in m.items() if k != field},  # a field missing
            {**m, field: None},
            {**m, field: rng.choice([True, "7", [], {}, -1, 101, 1e308, -0.0, 2**63, "2026-11-23T10:00:00Z", ""])},
            {**m, "type": rng.choice(["health", "disk_latency", None, 3])},
            {**m, "extra": {"nested": [1, 2]}, "id": "forged", "recv_ts": 1.0},
            {**m, "ts": int(m["ts"])},
            {**m, "ts": "2026-11-23T10:00:00Z"},
            {**m, "ts": now + 86400},
            {**m, "ts": 100.0},
            {**m, "service": "bad name"},
            {**m, "host": "x" * 129},
            {**m, "net": {"eth0": {"rx_bps": 1}}},
            {**m, "net": {"eth0": {"rx_bps": 1, "tx_bps": 2, "drops": 3}, "lo": {"tx_bps": 0.5, "rx_bps": 0}}},
            {**m, "net": {"bad iface": {"rx_bps": 1, "tx_bps": 2}}},
            # the memory of valid names must keep services and interfaces apart: '@' is only for interfaces,
            # 65-128 characters only for services
            {**m, "net": {"eth0@if7": {"rx_bps": 1, "tx_bps": 2}}},
            {**m, "service": "eth0@if7"},
            {**m, "service": "s" * 100},
            {**m, "net": {"s" * 100: {"rx_bps": 1, "tx_bps": 2}}},
            {**m, "net": {"eth0": {"rx_bps": -1, "tx_bps": 2}}},
            {**m, "net": []},
            {**m, "ram_free_gb": m["ram_total_gb"] + 1},
            {"serviceName": m["service"], "Timestamp": int(now * 1e9), "CPU": 0.5, "RAM": {"Total": 2, "Free": 1},
             "Disk": {"Total": 2, "Free": 1}},
        ]
        out += [orjson.dumps(x) for x in mutants]
        encoded = schema.encode(m)
        out += [encoded + b" ", b" \n" + encoded, encoded[:-1], encoded + b"x", encoded.replace(b"{", b"[", 1),
                schema.encode_seed003({**m, "cpu_pct": 10.0}), schema.sign(encoded, "k1", b"secret"),
                encoded.replace(b'"cpu_pct"', b'"cpu_pct":1,"cpu_pct"'), b"\xff" + encoded]
    return out


def test_fast_path_lands_exactly_what_the_schema_lands():
    """Whatever the fast path accepts, parse_message accepts and lands byte for byte; all plain health datagrams take it."""
    from ingest.fastpath import HealthFastPath

    fast = HealthFastPath(3600.0)
    now = time.time()
    taken = 0
    for data in fast_path_cases(now):
        landed = fast.landed(data, now, "c1-1-7")
        try:
            message = schema.parse_message(data, now, 3600.0)
        except schema.Rejected:
            assert landed is None, data
            continue
        if landed is not None:
            taken += 1
            assert landed == (schema.landed_line(message, "c1-1-7", now), message["ts"]), data
        else:  # only the shapes it leaves to the schema on purpose: other types, seed003, signed, an ISO-8601 ts
            assert message["type"] != "health" or b"serviceName" in data or b"#hmac" in data or b'"ts":"' in data, data
    assert taken >= 60 + 30  # every canonical message, and the mutants that stayed valid


def schema_lines(batch: list[bytes], recv_ts: float, ids: list[str]) -> bytes | None:
    """What the per-datagram path lands for ``batch``: every landed line, or None when the schema rejects one of it."""
    try:
        return b"".join(schema.landed_line(schema.parse_message(data, recv_ts, 3600.0), message_id, recv_ts)
                        for data, message_id in zip(batch, ids[:len(batch)], strict=True))
    except schema.Rejected:
        return None


def test_batch_path_lands_exactly_what_the_schema_lands():
    """Whole batches of canonical messages take the batch path and land byte for byte; a batch with any near miss in it is left
    to the per-datagram path (or, when the near miss is valid, lands byte for byte too)."""
    from ingest.batchpath import HealthBatchPath

    batch_path = HealthBatchPath(3600.0, 16384, "c1-1-")
    now = time.time()
    ids = [f"c1-1-{n}" for n in range(64)]
    this_hour = [schema.encode(m) for m in valid_messages(now, 200) if m["ts"] // 3600 == now // 3600][:128]
    for batch in (this_hour[:64], this_hour[64:], this_hour[:4]):
        assert batch_path.landed(batch, now, 0) == (now // 3600, schema_lines(batch, now, ids))
    # ids numbered from any message number, of a collector id that JSON escapes
    odd_prefix = 'c"\\\u00e9%d\t-9-'
    odd = HealthBatchPath(3600.0, 16384, odd_prefix)
    odd_ids = [f"{odd_prefix}{n}" for n in range(12345, 12409)]
    assert odd.landed(this_hour[:64], now, 12345) == (now // 3600, schema_lines(this_hour[:64], now, odd_ids))
    rng = random.Random(5)
    cases = fast_path_cases(now)
    body = b'"service":"a","ts":%.3f,"cpu_pct":1,"ram_total_gb":2,"ram_free_gb":1,"disk_total_gb":2,"disk_free_gb":1' % now
    cases += [
        b"", b" ", b"{" + body + b"} {" + body + b"}", b"{" + body + b",", b'"x":1}', b"{" + body + b',"x":{}',
        b"{" + body + b',"pad":"\xff"}', b"{" + body + b',"pad":"\\ud800"}', b"{" + body + b"}\n",
        b"{" + body + b',"ram_total_gb":1e16}', b"{" + body + b',"ram_total_gb":9999999999999998.0}',
        b"{" + body + b',"ram_total_gb":9223372036854775808}', b"{" + body + b',"ram_total_gb":1e-7}',
        b"{" + body + b',"host":""}', b"{" + body + b',"net":{"":{"rx_bps":1,"tx_bps":2}}}', b"{" + body + b',"type":"health"}',
        b"{" + body + b',"pad":"' + b"x" * 16384 + b'"}', b"{" + body.replace(b'"ts":', b'"ts":1e2+') + b"}",
        b"{" + body + b',"host":null}', b"{" + body + b',"net":null,"type":null}', b"{" + body + b',"id":7,"recv_ts":{"a":[1]}}',
        b"{" + body + b',"host":"h","net":{"eth0":{"rx_bps":1.5,"tx_bps":2,"x":3}},"type":"health"}',
    ]
    taken = 0
    for case in cases:
        for at in (0, 17, 63):  # the near miss first, in the middle, last
            batch = this_hour[:at] + [case] + this_hour[at:63]
            landed = batch_path.landed(batch, now, 0)
            expected = schema_lines(batch, now, ids)
            if expected is None:
                assert landed is None, case
            elif landed is not None:
                taken += 1
                assert landed[1] == expected, case
        # and in a batch of its own kind: a few near misses together
        batch = [rng.choice(cases) for _ in range(8)]
        landed = batch_path.landed(batch, now, 0)
        assert landed is None or landed[1] == schema_lines(batch, now, ids), batch
    assert taken >= 3 * 60  # every canonical message, and the near misses that stayed valid and canonical


def test_batch_path_numbers_are_written_as_orjson_writes_them():
    """Below FLOAT_BOUND msgspec and orjson write every float alike (the batch path leaves larger ones to the schema)."""
    import struct

    import msgspec

    from ingest.batchpath import FLOAT_BOUND

    rng = random.Random(3)
    floats = [struct.unpack("d", rng.getrandbits(64).to_bytes(8, "little"))[0] for _ in range(50_000)]
    floats += [rng.uniform(0, FLOAT_BOUND) for _ in range(50_000)] + [round(rng.uniform(0, 100), rng.randint(0, 9)) for _ in range(10_000)]
    floats += [FLOAT_BOUND * (1 - 2**-52), 1e15, 0.1, 5e-324, -0.0, 1e-7]
    encode = msgspec.json.Encoder().encode
    assert [x for x in floats if abs(x) < FLOAT_BOUND and encode(x) != orjson.dumps(x)] == []
    assert encode(FLOAT_BOUND) != orjson.dumps(FLOAT_BOUND)  # why the bound is there: 1e16 against 1e+16


def test_batch_receiver_gives_whole_datagrams_and_their_sources():
    from ingest.recvmmsg import BATCH, BatchReceiver

    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        with socket.socket(family, socket.SOCK_DGRAM) as rx, socket.socket(family, socket.SOCK_DGRAM) as tx:
            rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
            rx.bind((host, 0))
            tx.bind((host, 0))
            receiver = BatchReceiver(rx)
            assert receiver.receive(wait=False) == []
            sent = [bytes([i]) * (1 + i * 61) for i in range(BATCH + 3)] + [b"x" * 65507 if family == socket.AF_INET else b"x" * 65527]
            for data in sent:
                tx.sendto(data, rx.getsockname()[:2])
            got = []
            while len(got) < len(sent):
                batch = receiver.receive(wait=True)
                assert batch, "datagrams went missing"
                got += batch
                assert all(receiver.source(i) == tx.getsockname()[:2] for i in range(len(batch)))
            assert got == sent


# ---------------------------------------------------------------- several receiver processes (collector_processes)


def read_group(data_dir: Path) -> dict[str, dict]:
    """The counters of every receiver, by collector id."""
    out = {}
    for path in (data_dir / "state").glob("collector-*.json"):
        try:
            counters = orjson.loads(path.read_bytes())
        except orjson.JSONDecodeError:
            continue
        out[counters["collector_id"]] = counters
    return out


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class CollectorGroup(CollectProcess):
    """``healthmon collect`` with ``collector_processes`` = ``processes``, waited for until every receiver listens."""

    def __init__(self, data_dir: Path, port: int, processes: int, **settings) -> None:
        self.processes = processes
        super().__init__(data_dir, port, collector_processes=processes, **settings)

    def started(self) -> bool:
        group = self.read()
        if len(group) == self.processes and all(c["state"] == "running" and alive(c["pid"]) for c in group.values()):
            self.receivers = group
            return True
        return False

    def read(self) -> dict[str, dict]:
        """The counters of every receiver, by collector id."""
        return read_group(self.data_dir)

    def kill(self) -> None:
        super().kill()
        for counters in self.read().values():  # receivers whose parent was killed stop by themselves; make sure
            if alive(counters["pid"]):
                os.kill(counters["pid"], signal.SIGKILL)


start_group = kill_after_test(CollectorGroup)


def send_from_many(port: int, datagrams: list[bytes], sources: int = 16) -> None:
    """Send from ``sources`` sockets in turn (as many hosts would: SO_REUSEPORT spreads by source), pausing now and then."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(sources)]
    try:
        for i, data in enumerate(datagrams, 1):
            socks[i % sources].sendto(data, ("127.0.0.1", port))
            if i % 100 == 0:
                time.sleep(0.002)
    finally:
        for sock in socks:
            sock.close()


def test_receiver_group_lands_every_datagram_once_and_stops_on_sigterm(start_group, data_dir):
    group = start_group(3, segment_max_seconds=0.2)
    ids = sorted(group.receivers)
    assert ids == ["c1-0", "c1-1", "c1-2"]
    assert len({c["pid"] for c in group.receivers.values()} | {group.proc.pid}) == 4
    assert all(c["listen"] == f"udp://127.0.0.1:{group.port}" for c in group.receivers.values())
    now = time.time()
    valid = valid_messages(now, 600)
    invalid = invalid_datagrams(now, 2)
    sends = [schema.encode(m) for m in valid] + [d for _, d in invalid]
    random.Random(3).shuffle(sends)
    send_from_many(group.port, sends[:400])
    group.wait(lambda g: sum(c["landed_messages"] + c["deadletter_messages"] for c in g.values()) == 400)  # by the timer
    send_from_many(group.port, sends[400:])  # these are published at SIGTERM
    group.wait(lambda g: sum(c["received"] for c in g.values()) == len(sends))
    assert group.stop(signal.SIGTERM, timeout=10) == 0, group.output()
    assert not any(alive(c["pid"]) for c in group.receivers.values())

    counters = read_group(data_dir)
    assert sorted(counters) == ids and all(c["state"] == "stopped" for c in counters.values())
    assert sum(c["received"] for c in counters.values()) == len(sends)
    assert sum(c["accepted"] for c in counters.values()) == len(valid)
    assert sum(c["rejected"] for c in counters.values()) == len(invalid)
    assert all(c["received"] > 0 for c in counters.values()), "the kernel gave one receiver nothing"
    for c in counters.values():
        assert c["accepted"] + c["rejected"] == c["received"]
        assert c["landed_messages"] == c["accepted"] and c["deadletter_messages"] == c["rejected"]
        assert c["pending_segments"] == 0 and c["open_segments"] == 0
    # every valid message landed exactly once, by the receiver its id names
    rows = landed_rows(data_dir)
    assert sorted(row["service"] for _, row in rows) == sorted(m["service"] for m in valid)
    assert len({row["id"] for _, row in rows}) == len(valid)
    for path, row in rows:
        collector_id = row["id"].rsplit("-", 2)[0]
        assert path.name.startswith(f"{collector_id}-{counters[collector_id]['run_id']}-")
    by_receiver = collections.Counter(row["id"].rsplit("-", 2)[0] for _, row in rows)
    assert by_receiver == {cid: c["accepted"] for cid, c in counters.items() if c["accepted"]}
    letters = dead_letters(data_dir)
    assert collections.Counter(base64.b64decode(row["raw_b64"]) for _, row in letters) == collections.Counter(d for _, d in invalid)
    assert hidden_files(data_dir) == []
    assert "3 receiver processes" in group.output() and "[c1-2]" in group.output()


def test_receiver_group_stops_when_a_receiver_dies_and_with_its_parent(start_group, data_dir):
    """A receiver killed: the others publish and stop, the parent exits non-zero; the parent killed: the receivers stop."""
    group = start_group(2, segment_max_seconds=30)
    messages = valid_messages(time.time(), 200)
    send_from_many(group.port, [schema.encode(m) for m in messages])
    counters = group.wait(lambda g: sum(c["received"] for c in g.values()) == 200)
    victim, survivor = sorted(counters, key=lambda cid: counters[cid]["received"])
    os.kill(counters[victim]["pid"], signal.SIGKILL)  # its open segment dies with it (what a crash loses)
    assert group.stop(sig=None, timeout=10) == 1
    assert "exited with -9" in group.output()
    after = read_group(data_dir)
    assert after[survivor]["state"] == "stopped" and after[survivor]["landed_messages"] == counters[survivor]["received"]
    assert not alive(after[survivor]["pid"])

    # the parent killed: each receiver gets SIGTERM from the kernel and publishes what it holds
    for path in (data_dir / "state").glob("collector-*.json"):
        path.unlink()
    again = start_group(2, segment_max_seconds=30)
    send_from_many(again.port, [schema.encode(m) for m in messages])
    again.wait(lambda g: sum(c["received"] for c in g.values()) == 200)
    os.kill(again.proc.pid, signal.SIGKILL)
    final = again.wait(lambda g: all(c["state"] == "stopped" for c in g.values()))
    assert sum(c["landed_messages"] for c in final.values()) == 200


def test_receiver_group_refuses_a_port_in_use(data_dir, free_udp_port):
    """And names the spool of the one-process layout that no receiver of a group ships."""
    (data_dir / "spool" / "c1").mkdir(parents=True)
    (data_dir / "spool" / "c1" / "c1-1-000000.segment").write_bytes(b"{}\n")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # a group of receivers could have joined it
        taken.bind(("127.0.0.1", free_udp_port))
        proc = subprocess.run([sys.executable, "-m", "healthmon.cli", "collect"],
                              env=collector_env(data_dir, free_udp_port, collector_processes=2),
                              cwd=data_dir, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    assert f"cannot listen on udp://127.0.0.1:{free_udp_port}" in proc.stderr
    assert f"spool {data_dir / 'spool' / 'c1'} holds 1 segments of collector c1" in proc.stderr
    assert read_group(data_dir) == {}
