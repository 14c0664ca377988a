"""The message schema: every validation rule, every rejection reason, both wire formats."""

from __future__ import annotations

import hashlib
import hmac

import orjson
import pytest

from healthmon import schema, sketch
from healthmon.schema import REASONS, Rejected, parse_message
from healthmon.sketch import LatencySketch

RECV_TS = 1_700_000_000.0  # 2023-11-14T22:13:20Z
SKEW = 3600.0

GOOD = {
    "service": "payments-api.v2:eu_1",
    "ts": RECV_TS - 5,
    "cpu_pct": 37.5,
    "ram_total_gb": 32,
    "ram_free_gb": 12.75,
    "disk_total_gb": 512.0,
    "disk_free_gb": 201.5,
}

# The original Health-Monitoring-System mock client's datagram, byte for byte (note the trailing comma).
SEED003 = (
    b'{\n  "serviceName": "TV",\n  "Timestamp": 1700000000123456789,\n  "CPU": 0.45,\n'
    b'  "RAM": {"Total": 32, "Free": 12.7},\n  "Disk": {"Total": 4096, "Free": 880.1},\n}'
)


def changed(base: dict, changes: dict) -> bytes:
    """``base`` with ``changes`` applied (a value of ... removes the field), as a datagram."""
    msg = {**base, **changes}
    return orjson.dumps({k: v for k, v in msg.items() if v is not ...})


def dgram(**changes) -> bytes:
    """GOOD with ``changes`` applied, as a datagram."""
    return changed(GOOD, changes)


# A disk_latency message: 4 reads in 5 s, one sketch bucket per distinct latency.
DISK = {
    "type": "disk_latency",
    "host": "host-03",
    "device": "nvme0n1",
    "op": "read",
    "ts": RECV_TS - 1,
    "interval_s": 5,
    "count": 4,
    "sum_us": 640.5,
    "max_us": 400.0,
    "buckets": [[sketch.bucket_of(60.5), 1], [sketch.bucket_of(90.0), 2], [sketch.bucket_of(400.0), 1]],
}


def disk(**changes) -> bytes:
    """DISK with ``changes`` applied, as a datagram."""
    return changed(DISK, changes)


def parse(data: bytes, recv_ts: float = RECV_TS, skew: float = SKEW) -> dict:
    return parse_message(data, recv_ts, skew)


def reason_of(data: bytes, recv_ts: float = RECV_TS, skew: float = SKEW) -> str:
    with pytest.raises(Rejected) as info:
        parse_message(data, recv_ts, skew)
    assert info.value.reason in REASONS
    return info.value.reason


# ---------------------------------------------------------------- every rejection reason

# (reason, datagram): at least one per reason in REASONS, except "oversized", which is the
# collector's size rule (before parsing); tests/test_collector.py sends oversized datagrams.
REJECTED_CASES = [
    ("not_utf8", b"\xff\xfe{}"),
    ("not_utf8", b'{"service": "caf\xe9"}'),
    ("not_utf8", b'{"service": "ok", "ts": 1700000000, "x": "\xed\xa0\x80"}'),  # encoded surrogate
    ("not_json", b""),
    ("not_json", b"hello"),
    ("not_json", b'{"service": "a", "cpu_pct": '),
    ("not_json", b"{'service': 'single quotes'}"),
    ("not_json", b'{"cpu_pct": NaN}'),
    ("not_json", b'{"cpu_pct": 1e999}'),
    ("not_json", b"[" * 5000 + b"]" * 5000),
    ("not_object", b"[1, 2, 3]"),
    ("not_object", b'"health"'),
    ("not_object", b"42"),
    ("not_object", b"null"),
    ("not_object", b"[1, 2,]"),  # lenient parse, still not an object
    ("unknown_type", dgram(type="metrics")),
    ("unknown_type", dgram(type=7)),
    ("unknown_type", dgram(type=None)),
    ("unknown_type", dgram(type=["health"])),
    ("missing_field", dgram(service=...)),
    ("missing_field", dgram(ts=...)),
    ("missing_field", dgram(cpu_pct=...)),
    ("missing_field", dgram(ram_total_gb=...)),
    ("missing_field", dgram(ram_free_gb=...)),
    ("missing_field", dgram(disk_total_gb=...)),
    ("missing_field", dgram(disk_free_gb=...)),
    ("missing_field", dgram(cpu_pct=None)),
    ("missing_field", b"{}"),
    ("missing_field", dgram(net={"eth0": {"rx_bps": 1}})),
    ("missing_field", b'{"serviceName": "TV", "Timestamp": 1700000000000000000, "CPU": 0.1, "RAM": {"Total": 1, "Free": 0}}'),
    ("wrong_type", dgram(cpu_pct="45")),
    ("wrong_type", dgram(cpu_pct=True)),
    ("wrong_type", dgram(ram_total_gb=[32])),
    ("wrong_type", dgram(disk_free_gb={"gb": 1})),
    ("wrong_type", dgram(service=5)),
    ("wrong_type", dgram(host=["h1"])),
    ("wrong_type", dgram(net=[1, 2])),
    ("wrong_type", dgram(net={"eth0": 5})),
    ("wrong_type", dgram(net={"eth0": {"rx_bps": "1", "tx_bps": 2}})),
    ("wrong_type", b'{"serviceName": "TV", "Timestamp": 1700000000000000000, "CPU": 0.1, "RAM": [1, 0], "Disk": {"Total": 1, "Free": 0}}'),
    ("out_of_range", dgram(cpu_pct=100.0001)),
    ("out_of_range", dgram(cpu_pct=-0.5)),
    ("out_of_range", dgram(ram_total_gb=-1)),
    ("out_of_range", dgram(ram_free_gb=-0.1)),
    ("out_of_range", dgram(disk_total_gb=-3)),
    ("out_of_range", dgram(disk_free_gb=-3)),
    ("out_of_range", dgram(net={"eth0": {"rx_bps": -1, "tx_bps": 0}})),
    ("out_of_range", b'{"serviceName": "TV", "Timestamp": 1700000000000000000, "CPU": 1.5, '
                     b'"RAM": {"Total": 1, "Free": 0}, "Disk": {"Total": 1, "Free": 0},}'),
    ("bad_name", dgram(service="")),
    ("bad_name", dgram(service="has space")),
    ("bad_name", dgram(service="slash/name")),
    ("bad_name", dgram(service="x" * 129)),
    ("bad_name", dgram(service="caf\u00e9")),
    ("bad_name", dgram(service="line\nbreak")),
    ("bad_name", dgram(host="")),
    ("bad_name", dgram(net={"eth 0": {"rx_bps": 1, "tx_bps": 1}})),
    ("bad_timestamp", dgram(ts="yesterday")),
    ("bad_timestamp", dgram(ts="2023-13-01T00:00:00Z")),
    ("bad_timestamp", dgram(ts="2023-11-14T22:13:20+25:00")),
    ("bad_timestamp", dgram(ts=True)),
    ("bad_timestamp", dgram(ts=[RECV_TS])),
    ("bad_timestamp", dgram(ts={"s": RECV_TS})),
    ("bad_timestamp", dgram(ts=946684799.9)),  # before 2000-01-01
    ("bad_timestamp", dgram(ts="1999-12-31T23:59:59Z")),
    ("bad_timestamp", dgram(ts=RECV_TS + SKEW + 1)),  # too far in the future
    ("bad_timestamp", dgram(ts=1e300)),
    ("bad_timestamp", dgram(ts=-1)),
    ("bad_text", schema.encode({"type": "host_info", "host": "h", "ts": RECV_TS, "cpu_count": 1, "ram_total_gb": 1, "kernel": "k\x07"})),
    ("free_exceeds_total", dgram(ram_free_gb=32.5)),
    ("free_exceeds_total", dgram(disk_free_gb=600)),
    ("free_exceeds_total", dgram(ram_total_gb=0, ram_free_gb=0.1)),
    # disk_latency
    ("unknown_type", disk(type="disk")),
    ("unknown_type", disk(type="Disk_Latency")),
    *[("missing_field", disk(**{name: ...})) for name in
      ("host", "device", "op", "ts", "interval_s", "count", "sum_us", "max_us", "buckets")],
    ("missing_field", disk(count=None)),
    ("bad_name", disk(host="")),
    ("bad_name", disk(device="/dev/nvme0n1")),
    ("bad_name", disk(device="nvme 0")),
    ("bad_name", disk(device="d" * 129)),
    ("wrong_type", disk(device=0)),
    ("wrong_type", disk(op=1)),
    ("wrong_type", disk(op=["read"])),
    ("bad_choice", disk(op="READ")),
    ("bad_choice", disk(op="discard")),
    ("bad_choice", disk(op="")),
    ("bad_choice", disk(source="ebpf")),
    ("bad_choice", disk(source="Mock")),
    ("wrong_type", disk(source=True)),
    ("bad_timestamp", disk(ts="soon")),
    ("bad_timestamp", disk(ts=RECV_TS + SKEW + 1)),
    ("out_of_range", disk(interval_s=0)),
    ("out_of_range", disk(interval_s=0.0)),
    ("out_of_range", disk(interval_s=-5)),
    ("out_of_range", disk(interval_s=3600.001)),
    ("wrong_type", disk(interval_s="5")),
    ("wrong_type", disk(count=4.0)),  # an integer, not a float
    ("wrong_type", disk(count=True)),
    ("wrong_type", disk(count="4")),
    ("wrong_type", disk().replace(b'"count":4', b'"count":100000000000000000000')),  # beyond 64 bits: orjson gives a float
    ("out_of_range", disk(count=-1)),
    ("out_of_range", disk(count=schema.MAX_COUNT + 1)),
    ("out_of_range", disk(sum_us=-0.5)),
    ("out_of_range", disk(max_us=-1)),
    ("wrong_type", disk(sum_us="640")),
    ("wrong_type", disk(max_us=False)),
    ("wrong_type", disk(mean_only=1)),
    ("wrong_type", disk(mean_only="true")),
    ("wrong_type", disk(buckets={"10": 1})),
    ("wrong_type", disk(buckets=[[10, 1, 0]])),
    ("wrong_type", disk(buckets=[[10]])),
    ("wrong_type", disk(buckets=[10, 1])),
    ("wrong_type", disk(buckets=[{"bucket": 10, "count": 1}])),
    ("wrong_type", disk(buckets=[[10.0, 4]], count=4)),
    ("wrong_type", disk(buckets=[[10, 4.0]], count=4)),
    ("wrong_type", disk(buckets=[[True, 4]], count=4)),
    ("wrong_type", disk(buckets=[["10", 4]], count=4)),
    ("wrong_type", disk(buckets=[[10, None]], count=4)),
    ("wrong_type", disk(buckets="[[10, 4]]")),
    ("out_of_range", disk(buckets=[[-1, 4]], count=4)),
    ("out_of_range", disk(buckets=[[sketch.MAX_BUCKET + 1, 4]], count=4)),
    ("out_of_range", disk(buckets=[[10, 0], [11, 4]], count=4)),  # sparse: no empty buckets
    ("out_of_range", disk(buckets=[[10, -1], [11, 5]], count=4)),
    ("out_of_range", disk(buckets=[[10, schema.MAX_COUNT + 1]], count=4)),
    ("unordered_buckets", disk(buckets=[[11, 2], [10, 2]], count=4)),
    ("unordered_buckets", disk(buckets=[[10, 2], [10, 2]], count=4)),
    ("unordered_buckets", disk(buckets=[[0, 1], [5, 1], [200, 1], [100, 1]], count=4)),
    ("inconsistent_sketch", disk(count=5)),
    ("inconsistent_sketch", disk(count=3)),
    ("inconsistent_sketch", disk(buckets=[])),  # count 4 but no buckets, and not mean_only
    ("inconsistent_sketch", disk(buckets=[], mean_only=False)),
    ("inconsistent_sketch", disk(mean_only=True, count=5)),  # mean_only with buckets: they must still add up
    ("inconsistent_sketch", disk(count=0, buckets=[], sum_us=1.0, max_us=0)),  # nothing measured, some latency
    ("inconsistent_sketch", disk(count=0, buckets=[], sum_us=0, max_us=3.0)),
    ("inconsistent_sketch", disk(max_us=700.0)),  # one latency larger than the sum of all
    ("bad_timestamp", dgram(ts="2023-11-14T22:13:20" + "0" * 60)),  # an ISO string longer than MAX_TS_TEXT
]

# The collector's own checks, before or around parse_message: "oversized" (tests/test_collector.py), the signature,
# replay and rate-limit reasons (tests/test_security.py); "internal_error" only a validator bug produces.
COLLECTOR_REASONS = {"oversized", "internal_error", "unsigned", "unknown_key", "bad_signature", "stale_signature", "replayed",
                     "rate_limited"}


@pytest.mark.parametrize(("reason", "data"), REJECTED_CASES, ids=[f"{r}-{i}" for i, (r, _) in enumerate(REJECTED_CASES)])
def test_rejection_reason(reason, data):
    assert reason_of(data) == reason


def test_every_reason_is_produced_and_documented():
    produced = {reason for reason, _ in REJECTED_CASES} | COLLECTOR_REASONS
    assert produced == set(REASONS)
    assert all(isinstance(text, str) and text for text in REASONS.values())


def test_rejected_carries_reason_and_detail():
    with pytest.raises(Rejected) as info:
        parse(dgram(cpu_pct=101))
    assert info.value.reason == "out_of_range"
    assert "cpu_pct" in info.value.detail
    assert str(info.value).startswith("out_of_range")


def test_skew_is_a_parameter():
    ahead = dgram(ts=RECV_TS + 100)
    assert parse(ahead, skew=3600)["ts"] == RECV_TS + 100
    assert reason_of(ahead, skew=50) == "bad_timestamp"
    assert parse(dgram(ts=RECV_TS + 50), skew=50)["ts"] == RECV_TS + 50  # exactly at the limit


# ---------------------------------------------------------------- canonical parsing


def test_canonical_message():
    msg = parse(dgram(host="host-7", net={"eth0": {"rx_bps": 1000, "tx_bps": 2.5}}))
    assert msg == {"type": "health", **GOOD, "host": "host-7", "net": {"eth0": {"rx_bps": 1000, "tx_bps": 2.5}}}
    assert isinstance(msg["ts"], float)


def test_optional_fields_absent_or_null():
    assert parse(dgram()) == {"type": "health", **GOOD}
    assert parse(dgram(host=None, net=None)) == {"type": "health", **GOOD}


def test_explicit_type_health():
    assert parse(dgram(type="health"))["type"] == "health"


def test_unknown_fields_are_dropped():
    msg = parse(dgram(extra=1, version="9", net={"eth0": {"rx_bps": 1, "tx_bps": 2, "errors": 3}}))
    assert "extra" not in msg and "version" not in msg
    assert msg["net"] == {"eth0": {"rx_bps": 1, "tx_bps": 2}}


@pytest.mark.parametrize(
    "changes",
    [
        {"cpu_pct": 0},
        {"cpu_pct": 100},
        {"ram_free_gb": 32},  # free == total
        {"ram_total_gb": 0, "ram_free_gb": 0},
        {"disk_total_gb": 0, "disk_free_gb": 0},
        {"service": "x" * 128},
        {"service": "A.b_c:d-9"},
        {"ts": RECV_TS + SKEW},  # at the skew limit
        {"ts": RECV_TS - 30 * 86400},  # late by a month
        {"ts": 946684800},  # 2000-01-01
        {"net": {}},
        {"net": {"eth0@if12": {"rx_bps": 0, "tx_bps": 0}, "lo": {"rx_bps": 1e12, "tx_bps": 0.5}}},
    ],
)
def test_boundaries_accepted(changes):
    msg = parse(dgram(**changes))
    for key, value in changes.items():
        assert msg[key] == value


@pytest.mark.parametrize(
    ("ts", "epoch"),
    [
        (1700000000, 1700000000.0),
        (1700000000.25, 1700000000.25),
        ("2023-11-14T22:13:20Z", 1700000000.0),
        ("2023-11-14T22:13:20z", 1700000000.0),
        ("2023-11-14T22:13:20+00:00", 1700000000.0),
        ("2023-11-14T23:13:20+01:00", 1700000000.0),
        ("2023-11-14T17:13:20-05:00", 1700000000.0),
        ("2023-11-15T03:43:20+05:30", 1700000000.0),
        ("2023-11-14T22:13:20.125Z", 1700000000.125),
        ("2023-11-14T22:13:20.123456+00:00", 1700000000.123456),
        ("2023-11-14T22:13:20", 1700000000.0),  # naive: UTC
        ("2023-11-14 22:13:20Z", 1700000000.0),
    ],
)
def test_timestamps(ts, epoch):
    assert parse(dgram(ts=ts))["ts"] == pytest.approx(epoch, abs=1e-6)


def test_parse_ts_direct():
    assert schema.parse_ts("2023-11-14T22:13:20Z") == 1700000000.0
    assert schema.parse_ts(1700000000) == 1700000000.0
    for bad in ("", "now", None, True, [1]):
        with pytest.raises(Rejected) as info:
            schema.parse_ts(bad)
        assert info.value.reason == "bad_timestamp"


def test_trailing_comma_accepted():
    data = dgram()[:-1] + b",}"
    assert parse(data) == {"type": "health", **GOOD}


def test_whitespace_and_key_order_do_not_matter():
    data = b'\n { "disk_free_gb" : 1 ,"disk_total_gb":2, "ram_free_gb":1,"ram_total_gb":2,"cpu_pct":3,"ts":1700000000,"service":"s" }\n'
    assert parse(data)["service"] == "s"


# ---------------------------------------------------------------- seed003 (the original client's format)


def test_seed003_exact_datagram():
    msg = parse(SEED003, recv_ts=1700000010.0)
    assert msg["type"] == "health"
    assert msg["service"] == "TV"
    assert msg["ts"] == pytest.approx(1700000000.123456789, abs=1e-6)
    assert msg["cpu_pct"] == pytest.approx(45.0)
    assert msg["ram_total_gb"] == 32
    assert msg["ram_free_gb"] == pytest.approx(12.7)
    assert msg["disk_total_gb"] == 4096
    assert msg["disk_free_gb"] == pytest.approx(880.1)
    assert set(msg) == {"type", "service", "ts", "cpu_pct", "ram_total_gb", "ram_free_gb", "disk_total_gb", "disk_free_gb"}


def test_seed003_is_checked_like_canonical():
    free_too_big = SEED003.replace(b'"Free": 12.7', b'"Free": 33')
    assert reason_of(free_too_big, recv_ts=1700000010.0) == "free_exceeds_total"
    bad_name = SEED003.replace(b'"TV"', b'"T V"')
    assert reason_of(bad_name, recv_ts=1700000010.0) == "bad_name"
    future = SEED003.replace(b"1700000000123456789", b"1800000000123456789")
    assert reason_of(future, recv_ts=1700000010.0) == "bad_timestamp"
    no_ram = SEED003.replace(b'  "RAM": {"Total": 32, "Free": 12.7},\n', b"")
    assert reason_of(no_ram, recv_ts=1700000010.0) == "missing_field"


# ---------------------------------------------------------------- encoding round trips


MESSAGES = [
    dict(GOOD),
    {**GOOD, "host": "h1", "net": {"eth0": {"rx_bps": 10.5, "tx_bps": 0}}},
    {**GOOD, "cpu_pct": 0.0, "ram_free_gb": 0.0, "disk_free_gb": 512.0},
    {**GOOD, "service": "s" * 128, "cpu_pct": 99.99, "ts": RECV_TS - 0.001},
]


@pytest.mark.parametrize("message", MESSAGES)
def test_encode_round_trip(message):
    assert parse(schema.encode(message)) == {"type": "health", **message}


@pytest.mark.parametrize("message", MESSAGES)
def test_encode_seed003_round_trip(message):
    data = schema.encode_seed003(message)
    assert data.rstrip().endswith(b",\n}")  # the trailing comma, as the original client sends it
    msg = parse(data)
    assert msg["type"] == "health"
    assert msg["service"] == message["service"]
    assert msg["ts"] == pytest.approx(message["ts"], abs=1e-6)
    for key in ("cpu_pct", "ram_total_gb", "ram_free_gb", "disk_total_gb", "disk_free_gb"):
        assert msg[key] == pytest.approx(message[key], rel=1e-12, abs=1e-12), key


def test_encode_seed003_of_the_original_example():
    message = parse(SEED003, recv_ts=1700000010.0)
    again = parse(schema.encode_seed003(message), recv_ts=1700000010.0)
    assert set(again) == set(message)
    for key, value in message.items():
        assert again[key] == (value if isinstance(value, str) else pytest.approx(value, abs=1e-6))


# ---------------------------------------------------------------- signed datagrams (the wire format; checks: test_security)

SECRET = b"a-shared-secret-of-some-length"


def test_signed_datagram_is_the_message_then_the_trailer():
    body = schema.encode(GOOD)
    data = schema.encode(GOOD, key_id="agent-eu.1", secret=SECRET)
    expected_mac = hmac.new(SECRET, body, hashlib.sha256).hexdigest().encode()  # HMAC-SHA256 of exactly the sent bytes
    assert data == body + b"\n#hmac-sha256 agent-eu.1 " + expected_mac
    assert schema.sign(body, "agent-eu.1", SECRET) == data
    assert schema.split_signature(data) == (body, b"agent-eu.1", expected_mac)


def test_unsigned_datagram_is_unchanged_and_has_no_signature():
    assert schema.encode(GOOD) == orjson.dumps(GOOD)
    assert schema.split_signature(schema.encode(GOOD)) is None
    assert schema.split_signature(SEED003) is None


def test_signed_seed003_keeps_its_bytes():
    data = schema.sign(SEED003, "tv", SECRET)
    assert data.startswith(SEED003) and schema.split_signature(data).body == SEED003


@pytest.mark.parametrize("message", [GOOD, DISK])
def test_parse_message_ignores_a_trailer(message):
    """Whether a signature is checked is the collector's setting: the schema reads the message either way."""
    plain = parse(schema.encode(message))
    assert parse(schema.encode(message, key_id="k", secret=SECRET)) == plain
    assert parse(schema.encode(message, key_id="k", secret=SECRET)[:-1] + b"0") == plain  # not checked here
    assert parse(schema.sign(SEED003, "k", SECRET), recv_ts=1700000010.0) == parse(SEED003, recv_ts=1700000010.0)


@pytest.mark.parametrize("trailer", [b"", b"k", b"k ", b"k abc", b"k " + b"0" * 63, b"k " + b"0" * 65, b"k  " + b"0" * 64])
def test_malformed_trailer_is_a_bad_signature(trailer):
    with pytest.raises(Rejected) as info:
        schema.split_signature(schema.encode(GOOD) + schema.SIGNATURE_MARKER + trailer)
    assert info.value.reason == "bad_signature"


def test_two_trailers_are_malformed():
    data = schema.encode(GOOD, key_id="k", secret=SECRET)
    with pytest.raises(Rejected) as info:
        schema.split_signature(schema.sign(data, "k", SECRET))
    assert info.value.reason == "bad_signature"


@pytest.mark.parametrize("key_id", ["", "has space", "x" * 129, "ключ"])
def test_sign_refuses_a_bad_key_id(key_id):
    with pytest.raises(ValueError):
        schema.encode(GOOD, key_id=key_id, secret=SECRET)


def test_encode_needs_the_secret_with_a_key_id():
    with pytest.raises(ValueError):
        schema.encode(GOOD, key_id="k")


# ---------------------------------------------------------------- landed lines and derived schemas


def test_landed_line():
    msg = parse(dgram(host="h1", net={"eth0": {"rx_bps": 1, "tx_bps": 2}}))
    line = schema.landed_line(msg, "c1-123-0", RECV_TS + 0.5)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    row = orjson.loads(line)
    assert row == {"id": "c1-123-0", "recv_ts": RECV_TS + 0.5, **msg}


def _full_landed_keys() -> set[str]:
    msg = parse(dgram(host="h1", net={"eth0": {"rx_bps": 1, "tx_bps": 2}}))
    return set(orjson.loads(schema.landed_line(msg, "c1-1-0", RECV_TS)))


def test_duckdb_columns_match_landed_line():
    assert set(schema.duckdb_columns("health")) == _full_landed_keys()
    assert list(schema.duckdb_columns("health")) == [f.name for f in schema.landed_fields("health")]


def test_spark_schema_matches_landed_line():
    pytest.importorskip("pyspark")
    struct = schema.spark_schema("health")
    assert set(struct.fieldNames()) == _full_landed_keys()
    assert struct.fieldNames() == list(schema.duckdb_columns("health"))


def test_minimal_landed_line_is_a_subset_of_the_schema():
    line = schema.landed_line(parse(dgram()), "c1-1-0", RECV_TS)
    assert set(orjson.loads(line)) <= set(schema.duckdb_columns("health"))


@pytest.mark.parametrize("msg_type", sorted(schema.MESSAGE_TYPES))
def test_field_table_is_consistent(msg_type):
    names = [f.name for f in schema.landed_fields(msg_type)]
    assert len(names) == len(set(names))
    for f in schema.landed_fields(msg_type):
        assert f.kind in {"name", "text", "ts", "number", "net", "choice", "int", "buckets", "bool"}
        assert f.doc
        assert bool(f.choices) == (f.kind == "choice")
        if f.minimum is not None and f.maximum is not None:
            assert f.minimum < f.maximum
    assert schema.MIN_TS == 946684800.0  # 2000-01-01T00:00:00Z
    for free, total in schema.CAPACITY_PAIRS:
        assert free in {f.name for f in schema.HEALTH_FIELDS} and total in {f.name for f in schema.HEALTH_FIELDS}


# ---------------------------------------------------------------- disk_latency


def test_disk_latency_message():
    msg = parse(disk(source="bcc", mean_only=False))
    assert msg == {**DISK, "source": "bcc", "mean_only": False}
    assert isinstance(msg["ts"], float) and isinstance(msg["count"], int)
    assert parse(disk()) == DISK  # source and mean_only are optional
    assert parse(disk(source=None, mean_only=None)) == DISK


def test_disk_latency_unknown_fields_dropped_and_health_fields_ignored():
    msg = parse(disk(service="svc", cpu_pct=500, firmware="X1"))
    assert msg == DISK


@pytest.mark.parametrize(
    "changes",
    [
        {"op": "write"},
        *[{"source": source} for source in schema.LATENCY_SOURCES],
        {"device": "vda"},
        {"device": "loop0"},
        {"device": "dm-0"},
        {"device": "nvme0n1p2"},
        {"interval_s": 0.001},
        {"interval_s": 3600},  # at the limit
        {"interval_s": 2.5},
        {"ts": "2023-11-14T22:13:19Z"},
        {"count": 0, "sum_us": 0, "max_us": 0, "buckets": []},  # an idle interval
        {"count": 0, "sum_us": 0.0, "max_us": 0.0, "buckets": [], "mean_only": True},
        {"count": 1200, "sum_us": 96000.0, "max_us": 80.0, "buckets": [], "mean_only": True, "source": "diskstats"},
        {"count": 1200, "sum_us": 96000.0, "max_us": 0, "buckets": [], "mean_only": True},  # max unknown to diskstats
        {"count": 1, "sum_us": 0.5, "max_us": 0.5, "buckets": [[0, 1]]},
        {"count": 1, "sum_us": 2e9, "max_us": 2e9, "buckets": [[sketch.MAX_BUCKET, 1]]},  # beyond MAX_US: the last bucket
        {"count": schema.MAX_COUNT, "sum_us": 1e18, "max_us": 1e3, "buckets": [[5, schema.MAX_COUNT - 1], [7, 1]]},
        {"count": 4, "sum_us": 400.0, "max_us": 400.0, "buckets": [[sketch.bucket_of(400.0), 4]]},  # max == sum allowed
        {"count": 1, "sum_us": 100.0, "max_us": 100.0000000001, "buckets": [[10, 1]]},  # float rounding of a sum
        {"count": 520, "sum_us": 1e7, "max_us": 1e6, "buckets": [[b, 1] for b in range(sketch.MAX_BUCKET + 1)]},
    ],
)
def test_disk_latency_accepted(changes):
    msg = parse(disk(**changes))
    for key, value in changes.items():
        assert msg[key] == (value if key != "ts" else RECV_TS - 1)


def test_interval_must_be_positive():
    # cpu_pct's minimum 0 is inclusive; interval_s's 0 is not.
    assert parse(dgram(cpu_pct=0))["cpu_pct"] == 0
    assert reason_of(disk(interval_s=0)) == "out_of_range"
    assert parse(disk(interval_s=5e-324))["interval_s"] == 5e-324  # the smallest positive double
    assert schema.POSITIVE == 5e-324 and 0 < schema.POSITIVE


def _latencies(values) -> LatencySketch:
    s = LatencySketch()
    for v in values:
        s.add(v)
    return s


@pytest.mark.parametrize(
    "values",
    [
        [],
        [1.0],
        [80.0, 85.5, 90.25, 410.0, 77.125],
        [float(v) for v in range(1, 3000, 7)],
        [0.3, 1e12, 55.5],  # below 1 µs and beyond MAX_US: the first and last buckets
    ],
)
def test_latency_sketch_round_trip(values):
    latencies = _latencies(values)
    message = schema.disk_latency_message("host-01", "nvme1n1", "write", RECV_TS, 5.0, latencies, source="libbpf")
    msg = parse(schema.encode(message))
    assert msg == message
    again = LatencySketch.from_pairs(msg["buckets"], msg["sum_us"], msg["max_us"])
    assert (again.buckets, again.count) == (latencies.buckets, latencies.count)
    assert (again.sum_us, again.max_us) == (latencies.sum_us, latencies.max_us)
    for q in (0.5, 0.95, 0.99):
        assert sketch.quantile(msg["buckets"], q) == latencies.quantile(q)


def test_disk_latency_message_builder():
    latencies = _latencies([100.0, 200.0])
    message = schema.disk_latency_message("h", "sda", "read", RECV_TS, 1, latencies)
    assert "source" not in message and "mean_only" not in message
    assert message["count"] == 2 and message["sum_us"] == 300.0 and message["max_us"] == 200.0
    mean_only = LatencySketch()
    mean_only.count, mean_only.sum_us, mean_only.max_us = 10, 1000.0, 0.0
    message = schema.disk_latency_message("h", "sda", "read", RECV_TS, 1, mean_only, source="diskstats", mean_only=True)
    assert parse(schema.encode(message)) == {**message, "buckets": []}


def test_disk_latency_datagram_of_a_full_sketch_fits_the_default_limit():
    """Every bucket in use, each with a huge count: still well below max_datagram_bytes (16384)."""
    full = [[b, schema.MAX_COUNT // 1000] for b in range(sketch.MAX_BUCKET + 1)]
    data = disk(buckets=full, count=sum(c for _, c in full), sum_us=1e18, max_us=1e9, source="libbpf", mean_only=False)
    assert len(data) < 16384
    assert parse(data)["buckets"] == full


def _full_disk_landed_row() -> dict:
    msg = parse(disk(source="bcc", mean_only=False))
    return orjson.loads(schema.landed_line(msg, "c1-1-7", RECV_TS))


def test_disk_latency_landed_line_matches_duckdb_columns():
    row = _full_disk_landed_row()
    assert set(row) == set(schema.duckdb_columns("disk_latency"))
    assert list(schema.duckdb_columns("disk_latency")) == [f.name for f in schema.landed_fields("disk_latency")]
    columns = schema.duckdb_columns("disk_latency")
    assert columns["buckets"] == "BIGINT[][]" and columns["count"] == "BIGINT" and columns["mean_only"] == "BOOLEAN"


def test_disk_latency_landed_lines_read_by_duckdb(tmp_path):
    """DuckDB reads landed lines with the derived columns, the minimal line (no optional fields) too."""
    duckdb = pytest.importorskip("duckdb")
    path = tmp_path / "segment.jsonl"
    minimal = parse(disk())
    path.write_bytes(schema.landed_line(parse(disk(source="bcc", mean_only=True)), "c1-1-0", RECV_TS)
                     + schema.landed_line(minimal, "c1-1-1", RECV_TS))
    con = duckdb.connect()
    rows = con.execute("SELECT id, type, device, op, count, sum_us, buckets, source, mean_only "
                       "FROM read_json(?, columns = ?, format = 'newline_delimited') ORDER BY id",
                       [str(path), schema.duckdb_columns("disk_latency")]).fetchall()
    assert rows == [
        ("c1-1-0", "disk_latency", "nvme0n1", "read", 4, 640.5, DISK["buckets"], "bcc", True),
        ("c1-1-1", "disk_latency", "nvme0n1", "read", 4, 640.5, DISK["buckets"], None, None),
    ]


def test_disk_latency_spark_schema_matches_landed_line():
    pytest.importorskip("pyspark")
    from pyspark.sql import types as T

    struct = schema.spark_schema("disk_latency")
    assert set(struct.fieldNames()) == set(_full_disk_landed_row())
    assert struct.fieldNames() == list(schema.duckdb_columns("disk_latency"))
    assert struct["buckets"].dataType == T.ArrayType(T.ArrayType(T.LongType()))
    assert struct["buckets"].dataType.simpleString() == "array<array<bigint>>"
    assert struct["count"].dataType == T.LongType()
    assert struct["mean_only"].dataType == T.BooleanType()
    assert struct["op"].dataType == struct["source"].dataType == T.StringType()
    assert struct["interval_s"].dataType == struct["sum_us"].dataType == struct["max_us"].dataType == T.DoubleType()


def test_message_types():
    assert set(schema.MESSAGE_TYPES) == {"health", "disk_latency", "host_info"}
    assert {f.name for f in schema.MESSAGE_TYPES["disk_latency"] if f.required} == {
        "host", "device", "op", "ts", "interval_s", "count", "sum_us", "max_us", "buckets"}
    assert {f.name for f in schema.MESSAGE_TYPES["disk_latency"] if not f.required} == {"source", "mean_only"}
    assert schema.DISK_OPS == ("read", "write")
    assert schema.LATENCY_SOURCES == ("bcc", "libbpf", "diskstats", "mock")


def test_host_info_message():
    info = {"type": "host_info", "host": "h1", "ts": RECV_TS - 1, "cpu_count": 8, "cpu_cores": 4,
            "cpu_model": "AMD EPYC 7B13 @ 2.4GHz (with spaces, punctuation; etc.)", "ram_total_gb": 31.3, "kernel": "6.1.0-18-amd64"}
    assert parse_message(schema.encode(info), RECV_TS) == info
    assert reason_of(schema.encode({**info, "kernel": "x" * 257})) == "bad_text"
    assert reason_of(schema.encode({**info, "cpu_model": "tab\there"})) == "bad_text"
    assert reason_of(schema.encode({**info, "cpu_count": 0})) == "out_of_range"
    assert reason_of(schema.encode({k: v for k, v in info.items() if k != "kernel"})) == "missing_field"
