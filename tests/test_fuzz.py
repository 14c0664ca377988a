"""Bad input never stops the collector: a property test of the parser and 1,000,000 fuzzed datagrams over real UDP.

``test_parser_*`` (hypothesis, in-process, fast): ``schema.parse_message``
raises nothing but ``Rejected``, always with a reason of ``schema.REASONS``
(never ``internal_error``, which only a validator bug gives); what it accepts
becomes a landed line that parses back to the same message.

``test_a_million_fuzzed_datagrams`` (slow): a real ``healthmon collect``
process gets 1,000,000 datagrams over loopback UDP -- random bytes, truncated
and deeply nested JSON, huge numbers, wrong types, oversized datagrams, unicode
edge cases (lone surrogates, overlong and other invalid UTF-8, NUL, BOM,
non-characters), every kind of broken field, with valid messages mixed in --
drawn from a pool of a few thousand distinct bad datagrams, most of them
mutated once more per datagram (bytes flipped, cut, inserted, doubled),
deterministic for ``SEED``.  The outcome every datagram must get (accepted,
or rejected with which reason) is worked out in this process with the same
parser, while generating.  Then:

- the collector is still running, and stops with exit code 0 on SIGTERM;
- ``received`` is what was sent less what the kernel dropped for its socket
  (``drops`` of ``/proc/net/udp``; the sender keeps the socket's receive
  queue short, so it drops nothing in practice);
- ``accepted + rejected == received``, ``rejected_by_reason`` sums to
  ``rejected``, and every count is the expected one;
- the dead-letter store holds every rejected datagram, byte for byte, with
  its reason (compared as a multiset: count and sum of 64-bit hashes per
  reason, with a full diff only on mismatch);
- the raw landing store holds exactly the valid datagrams, once each
  (``landed == accepted``, unique ids).
"""

from __future__ import annotations

import array
import base64
import collections
import itertools
import json
import random
import signal
import socket
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from healthmon import schema, sketch
from tests.test_collector import Collector, landed_rows, published, read_counters

SEED = 20260607
TOTAL = 1_000_000
VALID_SHARE = 0.1  # of the stream: fresh valid messages, each one unique
MUTATED_SHARE = 0.6  # of the bad datagrams: mutated once more, per datagram
MAX_DATAGRAM = 16384  # the collector's max_datagram_bytes (its default)
SKEW = 3600.0  # the collector's max_clock_skew_s (its default)
TEST_SPAN_S = 900.0  # the collector sees each datagram within this long of its generation
QUEUE_HIGH_BYTES = 1 << 20  # the sender waits while the collector's socket holds more than this (kernel accounting)
CHECK_EVERY = 1024  # datagrams between two looks at the socket's queue (a look costs ~0.1 ms: /proc/net/udp lists every socket)
ACCEPTED = "accepted"


# ---------------------------------------------------------------- the parser, in-process (hypothesis)

FIELD_NAMES = sorted({f.name for fields in schema.MESSAGE_TYPES.values() for f in fields}
                     | {"type", "serviceName", "Timestamp", "CPU", "RAM", "Disk", "Total", "Free", "rx_bps", "tx_bps"})

json_scalars = (
    st.none() | st.booleans() | st.integers() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20)
    | st.sampled_from(["health", "disk_latency", "host_info", "read", "write", "bcc", "mock", "2026-01-01T00:00:00Z",
                       "svc-1", "eth0", "\ud800", "\x00", "a\u202eb", "\U0001f600", "\ufeff"])
)
json_values = st.recursive(json_scalars, lambda children: st.lists(children, max_size=4)
                           | st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=8), children, max_size=5),
                           max_leaves=20)


def _plausible(now: float):
    """Values close to valid ones, so that deep checks (ranges, sketches, capacities) are reached too."""
    number = st.floats(min_value=-10, max_value=1e4) | st.integers(min_value=-5, max_value=10**6)
    ts = st.floats(min_value=now - 10 * 86400, max_value=now + 2 * SKEW) | st.sampled_from([now, schema.MIN_TS - 1, now + SKEW + 1])
    buckets = st.lists(st.lists(st.integers(min_value=-1, max_value=sketch.MAX_BUCKET + 1), min_size=2, max_size=2), max_size=4)
    net = st.dictionaries(st.text(max_size=6), st.fixed_dictionaries({"rx_bps": number, "tx_bps": number}), max_size=2)
    value = {"service": st.text(max_size=6) | st.just("svc"), "host": st.just("h1"), "device": st.just("vda"), "ts": ts,
             "cpu_pct": number, "ram_total_gb": number, "ram_free_gb": number, "disk_total_gb": number, "disk_free_gb": number,
             "op": st.sampled_from(["read", "write", "trim"]), "interval_s": number, "count": st.integers(min_value=-1, max_value=50),
             "sum_us": number, "max_us": number, "buckets": buckets, "source": st.sampled_from(["bcc", "mock", "x"]),
             "mean_only": st.booleans(), "net": net, "cpu_count": st.integers(min_value=0, max_value=8), "kernel": st.text(max_size=8),
             "type": st.sampled_from(["health", "disk_latency", "host_info", "other"])}
    return st.fixed_dictionaries({}, optional={name: strategy | json_values for name, strategy in value.items()})


def _encodings(value) -> st.SearchStrategy[bytes]:
    """The ways a sender might put ``value`` on the wire, including invalid ones (NaN, raw lone surrogates)."""
    def dump(ensure_ascii: bool, trailing_comma: bool) -> bytes:
        text = json.dumps(value, ensure_ascii=ensure_ascii)
        if trailing_comma and text.endswith("}") and len(text) > 2:
            text = text[:-1] + ",}"
        return text.encode("utf-8", "surrogatepass")

    return st.builds(dump, st.booleans(), st.booleans())


def assert_parser_contract(data: bytes, recv_ts: float) -> None:
    try:
        message = schema.parse_message(data, recv_ts, SKEW)
    except schema.Rejected as exc:
        assert exc.reason in schema.REASONS and exc.reason != "internal_error", exc.reason
        return
    assert message["type"] in schema.MESSAGE_TYPES
    line = schema.landed_line(message, "c1-1-0", recv_ts)
    assert line.endswith(b"\n") and b"\n" not in line[:-1]
    # A landed line carries canonical fields: parsed again, it is the same message (the envelope is dropped).
    assert schema.parse_message(line, recv_ts, SKEW) == message


NOW = 1_790_000_000.0


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_parser_never_raises_on_random_bytes(data):
    assert_parser_contract(data, NOW)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given((json_values | _plausible(NOW)).flatmap(_encodings))
def test_parser_never_raises_on_json_shaped_input(data):
    assert_parser_contract(data, NOW)


def test_parser_edge_cases_are_rejected_with_their_reason():
    """A few hand-picked datagrams whose reason is known by construction."""
    base = {"service": "s", "ts": NOW, "cpu_pct": 1, "ram_total_gb": 2, "ram_free_gb": 1, "disk_total_gb": 2, "disk_free_gb": 1}
    cases = {
        b"": "not_json",
        b"\xef\xbb\xbf" + orjson.dumps(base): "not_json",  # a BOM is not JSON
        b'{"service": "\xed\xa0\x80"}': "not_utf8",  # a lone surrogate, encoded raw
        b'{"service": "\xc0\xaf"}': "not_utf8",  # overlong '/'
        b'{"service": "\xf8\x88\x80\x80\x80"}': "not_utf8",  # a 5-byte sequence
        b'{"service": "\\ud800"}': "not_json",  # a lone surrogate, escaped
        b"[" * 2000 + b"]" * 2000: "not_json",  # deeper than the JSON parser goes
        b"[" * 1000 + b"]" * 1000: "not_object",
        orjson.dumps({**base, "service": "a\x00b"}): "bad_name",
        orjson.dumps({**base, "service": "caf\u00e9"}): "bad_name",
        json.dumps({**base, "cpu_pct": 10**30}).encode(): "out_of_range",
        orjson.dumps(base).replace(b'"cpu_pct":1', b'"cpu_pct":1e999'): "not_json",
        orjson.dumps(base).replace(b'"cpu_pct":1', b'"cpu_pct":NaN'): "not_json",
        orjson.dumps({**base, "ts": "9999-12-31T23:59:59-23:59"}): "bad_timestamp",
        orjson.dumps({**base, "ts": "0001-01-01T00:00:00+23:59"}): "bad_timestamp",
        orjson.dumps({**base, "ts": 1e300}): "bad_timestamp",
        orjson.dumps({**base, "net": {"eth0": {"rx_bps": 1, "tx_bps": -1}}}): "out_of_range",
        orjson.dumps({**base, "type": ["health"]}): "unknown_type",
    }
    for data, reason in cases.items():
        with pytest.raises(schema.Rejected) as caught:
            schema.parse_message(data, NOW, SKEW)
        assert caught.value.reason == reason, (data[:60], caught.value)


# ---------------------------------------------------------------- the fuzzed stream

PLACEHOLDER = b"########"  # in a valid template's name, replaced by the datagram's own number: every valid datagram is unique
MUTATIONS = 50_000  # mutated variants of the pool's datagrams (distinct ones are kept)


def _health(rng: random.Random, now: float, service: str) -> dict:
    ram, disk = rng.choice([8, 16, 32.5, 64]), rng.choice([256, 512, 1000.5])
    message = {"service": service, "ts": round(now - rng.uniform(0, 600), 3), "cpu_pct": round(rng.uniform(0, 100), 2),
               "ram_total_gb": ram, "ram_free_gb": round(rng.uniform(0, ram), 2), "disk_total_gb": disk,
               "disk_free_gb": round(rng.uniform(0, disk), 2)}
    if rng.random() < 0.3:
        message["host"] = f"host-{rng.randrange(50)}"
    if rng.random() < 0.3:
        message["net"] = {"eth0": {"rx_bps": rng.randrange(10**9), "tx_bps": round(rng.uniform(0, 1e6), 1)}}
    return message


def _disk_latency(rng: random.Random, now: float, host: str) -> dict:
    latencies = sketch.LatencySketch()
    for _ in range(rng.randrange(1, 20)):
        latencies.add(rng.lognormvariate(4.5, 0.7))
    return schema.disk_latency_message(host, f"nvme{rng.randrange(4)}n1", rng.choice(schema.DISK_OPS),
                                       round(now - rng.uniform(0, 600), 3), 5.0, latencies, source="mock")


def valid_template(rng: random.Random, now: float) -> bytes:
    """A valid datagram (health, seed003 format or disk_latency) named ``fz-<PLACEHOLDER>``."""
    name = "fz-" + PLACEHOLDER.decode()
    kind = rng.random()
    if kind < 0.7:
        return schema.encode(_health(rng, now, name))
    if kind < 0.85:
        return schema.encode_seed003({k: v for k, v in _health(rng, now, name).items() if k not in ("host", "net")})
    return schema.encode(_disk_latency(rng, now, name))


# Inside a JSON string: lone surrogates raw (invalid UTF-8) and escaped, overlong and 5/6-byte sequences, stray continuation
# bytes, code points past U+10FFFF, NUL raw and escaped, a right-to-left override, a BOM, a non-character, bad escapes, a tab.
STRING_EDGES = (
    b"\xed\xa0\x80", b"\xed\xbf\xbf", b"\\ud800", b"\\udfff", b"\\ud800\\u0041", b"\\uDBFF\\uDFFF",
    b"\xc0\xaf", b"\xc1\xbf", b"\xe0\x80\xaf", b"\xf0\x80\x80\xaf", b"\xf8\x88\x80\x80\x80", b"\xfc\x84\x80\x80\x80\x80",
    b"\x80", b"\xbf", b"\xfe", b"\xff", b"\xf4\x90\x80\x80", b"\x00", b"\\u0000", b"\\u202e", b"\\ufeff", b"\xef\xbf\xbe",
    b"\\\\", b"\\x41", b"\t",
)


def _deep(depth: int, opener: bytes, closer: bytes, inner: bytes = b"1") -> bytes:
    return opener * depth + inner + closer * depth


def bad_pool(rng: random.Random, now: float) -> list[bytes]:
    """A few thousand distinct datagrams, nearly all bad, of every kind."""
    base = _health(rng, now, "pool")
    base.pop("host", None)
    base.pop("net", None)
    valid = [schema.encode(_health(rng, now, f"pool-{i}")) for i in range(200)]
    valid += [schema.encode(_disk_latency(rng, now, f"pool-{i}")) for i in range(100)]
    odd_values = [None, True, False, 0, -1, 1e308, -1e308, 2**64, -(2**63) - 1, 10**30, 1e-320, 0.1, "", "1", "NaN",
                  "\u0000", "\ud7ff", "\ue000", "\uffff", "\U0010ffff", "x" * 300, [], [1], {}, {"a": 1}]
    pool: list[bytes] = list(valid[:20])  # a few valid ones (mutations of them are often valid too)
    for _ in range(600):  # random bytes
        pool.append(rng.randbytes(rng.choice([0, 1, 2, 7, 30, 100, 300, 1400])))
    for data in valid:  # truncated JSON
        for _ in range(3):
            pool.append(data[: rng.randrange(len(data))])
    for depth in (10, 100, 1000, 1023, 1024, 1025, 1500, 5000):  # deeply nested
        pool += [_deep(depth, b"[", b"]"), _deep(depth, b'{"a":', b"}"), _deep(depth, b"[", b"")]
        pool.append(orjson.dumps({**base, "service": "deep"})[:-1] + b',"net":' + _deep(depth, b'{"x":', b"}", b"{}") + b"}")
    for field in [*base, "type", "host", "net"]:  # wrong types, huge numbers, edge values: one field at a time
        for value in odd_values:
            pool.append(json.dumps({**base, field: value}).encode())
        for literal in (b"1e999", b"-1e999", b"NaN", b"Infinity", b"1" * 400, b"0x10", b"01", b"1.", b"+1"):
            pool.append(orjson.dumps(base)[:-1] + f',"{field}":'.encode() + literal + b"}")
    for field in ("service", "host", "ts", "type"):  # unicode edge cases in strings, raw and escaped
        rest = orjson.dumps({k: v for k, v in base.items() if k != field})[1:]
        for raw in STRING_EDGES:
            pool.append(b'{"' + field.encode() + b'":"a' + raw + b'b",' + rest)
    for prefix in (b"\xef\xbb\xbf", b"\xff\xfe", b"\x00", b" ", b"\n\n"):
        pool.append(prefix + valid[0])
    pool.append(valid[1].decode().encode("utf-16"))
    pool.append(valid[2].decode().encode("utf-32"))
    # oversized (the largest UDP payload is 65507 bytes): few, since each is stored again, in base64, as a dead letter
    pool.append(rng.randbytes(MAX_DATAGRAM + 1))
    pool.append(rng.randbytes(65000))
    for size in (MAX_DATAGRAM, MAX_DATAGRAM + 100, 20000):
        pool.append(orjson.dumps({**base, "pad": "x" * size}))
    for i in range(300):  # broken sketches, capacities, choices, non-objects, unknown types, seed003 leftovers
        latency = _disk_latency(rng, now, "h")
        broken = rng.choice([{"buckets": [*latency["buckets"][::-1], [1, 1]]}, {"count": latency["count"] + 1},
                             {"max_us": latency["sum_us"] * 2 + 1}, {"op": "discard"}, {"source": "guess"},
                             {"buckets": [[sketch.MAX_BUCKET + 1, 1]]}, {"buckets": [[1, 0]]}, {"interval_s": 0}, {"count": 0},
                             {"mean_only": "yes"}, {"buckets": [[1, True]]}, {"buckets": [[1, 1, 1]]}])
        pool.append(orjson.dumps({**latency, **broken}))
        pool.append(orjson.dumps({**base, "service": f"p{i}", "ram_free_gb": base["ram_total_gb"] + 1 + i}))
        pool.append(orjson.dumps({**base, "type": f"t{i}"}))
        pool.append(orjson.dumps(rng.choice([[i], i, f"s{i}", None, True, i / 7, [{"service": "x"}]])))
        pool.append(b'{"serviceName": "seed-%d", "Timestamp": %d, "CPU": %s, "RAM": %s,}' % (
            i, int(now * 1e9), rng.choice([b"0.5", b"2", b'"x"', b"null"]), rng.choice([b"null", b"[]", b'{"Total": 1, "Free": 2}'])))
    info = {"type": "host_info", "host": "h1", "ts": base["ts"], "cpu_count": 2, "ram_total_gb": 8.0, "kernel": "6.1"}
    for text in ("", "x" * 256, "x" * 257, "a\x00b", "a\nb", "a\u202eb", "\U0001f600", 5, None):
        pool.append(orjson.dumps({**info, "kernel": text}))
        pool.append(orjson.dumps({**info, "cpu_model": text}))
    pool += [b"{}", b"null", b"[]", b'""', b"{" * 3, b"}" * 3]
    return list(dict.fromkeys(pool))  # distinct, in a stable order


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One random change: a bit flipped, a cut, a byte inserted or removed, a slice doubled, or a random tail."""
    if not data:
        return bytes([rng.getrandbits(8)])
    i = rng.randrange(len(data))
    op = rng.randrange(6)
    if op == 0:
        return data[:i] + bytes([data[i] ^ (1 << rng.randrange(8))]) + data[i + 1 :]
    if op == 1:
        return data[:i]
    if op == 2:
        return data[:i] + bytes([rng.getrandbits(8)]) + data[i:]
    if op == 3:
        return data[:i] + data[i + 1 :]
    if op == 4:
        return data[:i] + data[i : i + 16] + data[i:]
    return data[:i] + rng.randbytes(rng.randrange(1, 8))


def expected_outcome(data: bytes, recv_ts: float) -> str:
    """What the collector must do with ``data`` received at ``recv_ts``: "accepted", or reject it for this reason."""
    if len(data) > MAX_DATAGRAM:
        return "oversized"
    try:
        schema.parse_message(data, recv_ts, SKEW)
    except schema.Rejected as exc:
        return exc.reason
    return ACCEPTED


def stable_outcome(data: bytes, now: float) -> str | None:
    """The outcome, when it is the same whenever the collector receives it within TEST_SPAN_S (None: a ts at the skew limit)."""
    outcome = expected_outcome(data, now)
    if outcome in (ACCEPTED, "bad_timestamp") and expected_outcome(data, now + TEST_SPAN_S) != outcome:
        return None
    return outcome


class FuzzStream:
    """``total`` datagrams, deterministic for ``seed``, and the outcome each must get.

    Held compactly: ``picks[i]`` is the index of datagram ``i`` in ``pool``
    (distinct datagrams whose outcomes are worked out once), or -1 for a
    fresh valid datagram, made from a template and its own number when sent.
    """

    def __init__(self, total: int, seed: int, now: float) -> None:
        rng = random.Random(seed)
        base = bad_pool(rng, now)
        mutated = [mutate(base[rng.randrange(len(base))], rng) for _ in range(MUTATIONS)]
        self.pool: list[bytes] = []
        self.outcomes: list[str] = []
        for data in dict.fromkeys(base + mutated):
            outcome = stable_outcome(data, now)
            if outcome is not None:
                self.pool.append(data)
                self.outcomes.append(outcome)
        first_mutated = sum(1 for data in dict.fromkeys(base) if stable_outcome(data, now) is not None)
        self.templates = [valid_template(rng, now) for _ in range(1000)]
        assert {stable_outcome(t.replace(PLACEHOLDER, b"00000000"), now) for t in self.templates} == {ACCEPTED}
        self.picks = array.array("i")
        mutated_n = len(self.pool) - first_mutated
        for _ in range(total):
            roll = rng.random()
            if roll < VALID_SHARE:
                self.picks.append(-1)
            elif roll < VALID_SHARE + (1 - VALID_SHARE) * MUTATED_SHARE:
                self.picks.append(first_mutated + rng.randrange(mutated_n))
            else:
                self.picks.append(rng.randrange(first_mutated))
        self.fresh_valid = self.picks.count(-1)

    def __len__(self) -> int:
        return len(self.picks)

    def __iter__(self) -> Iterator[bytes]:
        pool, templates, n = self.pool, self.templates, 0
        for pick in self.picks:
            if pick >= 0:
                yield pool[pick]
            else:
                yield templates[n % len(templates)].replace(PLACEHOLDER, b"%08d" % n)
                n += 1

    def expected_counts(self) -> collections.Counter:
        """How many datagrams must be accepted, and rejected for each reason."""
        counts = collections.Counter({ACCEPTED: self.fresh_valid})
        for pick, times in collections.Counter(self.picks).items():
            if pick >= 0:
                counts[self.outcomes[pick]] += times
        return counts

    def rejected_fingerprint(self) -> dict[str, tuple[int, int]]:
        """The multiset of rejected datagrams with their reasons, as ``fingerprint`` gives it."""
        out: dict[str, tuple[int, int]] = {}
        for pick, times in collections.Counter(self.picks).items():
            if pick >= 0 and self.outcomes[pick] != ACCEPTED:
                n, h = out.get(self.outcomes[pick], (0, 0))
                out[self.outcomes[pick]] = (n + times, (h + times * hash(self.pool[pick])) & MASK64)
        return out

    def rejected_counter(self) -> collections.Counter:
        """The same multiset, in full (only to show a difference)."""
        return collections.Counter({(self.pool[p], self.outcomes[p]): t for p, t in collections.Counter(self.picks).items()
                                    if p >= 0 and self.outcomes[p] != ACCEPTED})


MASK64 = (1 << 64) - 1


def fingerprint(items: Iterable[tuple[bytes, str]]) -> dict[str, tuple[int, int]]:
    """Per reason: how many datagrams, and the sum of their 64-bit hashes (equal multisets, equal fingerprints)."""
    out: dict[str, tuple[int, int]] = {}
    for data, reason in items:
        n, h = out.get(reason, (0, 0))
        out[reason] = (n + 1, (h + hash(data)) & MASK64)
    return out


# ---------------------------------------------------------------- sending, paced by the kernel's own accounting


def udp_socket_stats(port: int) -> tuple[int, int]:
    """(bytes queued, datagrams dropped) of the UDP socket bound to 127.0.0.1:``port``, from /proc/net/udp."""
    local = f"0100007F:{port:04X}"
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == local:
            return int(fields[4].split(":")[1], 16), int(fields[12])
    raise AssertionError(f"no UDP socket on 127.0.0.1:{port}")


def send_paced(port: int, datagrams: Iterable[bytes]) -> int:
    """Send everything, waiting while the collector's socket holds over QUEUE_HIGH_BYTES (so the kernel need not drop); how many."""
    sent = 0
    it = iter(datagrams)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(("127.0.0.1", port))
        send = sock.send
        while True:
            while udp_socket_stats(port)[0] > QUEUE_HIGH_BYTES:
                time.sleep(0.002)
            chunk = list(itertools.islice(it, CHECK_EVERY))
            if not chunk:
                return sent
            for data in chunk:
                send(data)
            sent += len(chunk)


def dead_letter_records(data_dir: Path) -> Iterator[tuple[bytes, str]]:
    """(exact bytes, reason) of every dead letter, file by file (a million of them do not fit in memory as dicts)."""
    for path in published(data_dir / "landing" / "deadletter"):
        for line in path.read_bytes().splitlines():
            row = orjson.loads(line)
            yield base64.b64decode(row["raw_b64"]), row["reason"]


@pytest.mark.slow
def test_a_million_fuzzed_datagrams(data_dir, free_udp_port):
    now = time.time()
    stream = FuzzStream(TOTAL, SEED, now)
    want = stream.expected_counts()
    assert len(want) >= 15, want  # the stream reaches most reasons, and acceptance

    collector = Collector(data_dir, free_udp_port)
    started = time.monotonic()
    sent = send_paced(collector.port, stream)
    send_s = time.monotonic() - started
    assert sent == TOTAL
    _queued, drops = udp_socket_stats(collector.port)
    collector.wait(lambda c: c["received"] + drops >= TOTAL, timeout=300)
    assert collector.proc.poll() is None, collector.output()[-3000:]  # it never crashed
    assert collector.stop(signal.SIGTERM, timeout=60) == 0, collector.output()[-3000:]
    assert "parser failed" not in collector.output()

    counters = read_counters(data_dir)
    print(f"\nfuzz: {TOTAL} sent in {send_s:.1f} s, {counters['received']} received, {drops} dropped by the kernel, "
          f"{counters['accepted']} accepted, {counters['rejected']} rejected {dict(sorted(counters['rejected_by_reason'].items()))}; "
          f"{len(stream.pool)} distinct datagrams besides the fresh valid ones")
    assert counters["state"] == "stopped"
    assert counters["received"] == TOTAL - drops
    assert counters["accepted"] + counters["rejected"] == counters["received"]
    assert sum(counters["rejected_by_reason"].values()) == counters["rejected"]
    assert set(counters["rejected_by_reason"]) <= set(schema.REASONS) - {"internal_error"}
    assert counters["pending_segments"] == 0 and counters["open_segments"] == 0
    assert not [p for p in (data_dir / "landing").rglob("*") if p.name.startswith(("_", "."))]

    # Every dead letter: a reason, the exact bytes.  Every accepted datagram: one landed line, unique id.
    letters = fingerprint(dead_letter_records(data_dir))
    assert {reason: n for reason, (n, _h) in letters.items()} == counters["rejected_by_reason"]
    assert counters["deadletter_messages"] == counters["rejected"]
    rows = [row for _, row in landed_rows(data_dir)]
    assert len(rows) == counters["accepted"] == counters["landed_messages"]
    assert len({row["id"] for row in rows}) == len(rows)

    if drops == 0:  # the collector got every datagram: each met exactly its expected outcome
        assert counters["accepted"] == want[ACCEPTED]
        assert counters["rejected_by_reason"] == {reason: n for reason, n in want.items() if reason != ACCEPTED}
        if letters != stream.rejected_fingerprint():
            diff = stream.rejected_counter()
            diff.subtract(dead_letter_records(data_dir))
            raise AssertionError(f"dead letters differ from the rejected datagrams: {[kv for kv in diff.items() if kv[1]][:10]}")
        fresh = sorted(int(name[3:]) for row in rows if (name := row.get("service") or row["host"]).startswith("fz-"))
        assert fresh == list(range(stream.fresh_valid))  # each fresh valid datagram landed once
