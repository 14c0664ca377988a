"""The message schema: every validation rule, every rejection reason, both wire formats."""

from __future__ import annotations

import orjson
import pytest

from healthmon import schema
from healthmon.schema import REASONS, Rejected, parse_message

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


def dgram(**changes) -> bytes:
    """GOOD with ``changes`` applied (a value of ... removes the field), as a datagram."""
    msg = dict(GOOD)
    for key, value in changes.items():
        if value is ...:
            msg.pop(key, None)
        else:
            msg[key] = value
    return orjson.dumps(msg)


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
    ("free_exceeds_total", dgram(ram_free_gb=32.5)),
    ("free_exceeds_total", dgram(disk_free_gb=600)),
    ("free_exceeds_total", dgram(ram_total_gb=0, ram_free_gb=0.1)),
]


@pytest.mark.parametrize(("reason", "data"), REJECTED_CASES, ids=[f"{r}-{i}" for i, (r, _) in enumerate(REJECTED_CASES)])
def test_rejection_reason(reason, data):
    assert reason_of(data) == reason


def test_every_reason_is_produced_and_documented():
    # oversized is the collector's own check (test_collector); internal_error only a validator bug produces.
    produced = {reason for reason, _ in REJECTED_CASES} | {"oversized", "internal_error"}
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


def test_field_table_is_consistent():
    for f in schema.landed_fields("health"):
        assert f.kind in {"name", "ts", "number", "net"}
        if f.minimum is not None and f.maximum is not None:
            assert f.minimum < f.maximum
    assert schema.MIN_TS == 946684800.0  # 2000-01-01T00:00:00Z
    for free, total in schema.CAPACITY_PAIRS:
        assert free in {f.name for f in schema.HEALTH_FIELDS} and total in {f.name for f in schema.HEALTH_FIELDS}
