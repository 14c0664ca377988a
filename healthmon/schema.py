"""The message schema: the one place that says what a message is.

From the field table below come the datagram parser and validator (used by the
collector), the Spark ``StructType`` of landed lines (batch and speed jobs) and
the DuckDB column list of landed lines (tests, ad-hoc queries).

Two message types: ``health`` (one service's resources at one instant) and
``disk_latency`` (one block device, one op, one interval, pre-aggregated by
the sender into the latency sketch of ``healthmon.sketch``: count, sum_us,
max_us and sparse ``[[bucket, count], ...]`` buckets that merge exactly).

Wire format (DESIGN.md): one UTF-8 JSON object per UDP datagram.  A ``type``
field selects the message type; a message without one is ``health``.  The
original Health-Monitoring-System mock client's format ("seed003": keys
``serviceName``, ``Timestamp`` in ns, ``CPU`` as a fraction, ``RAM``/``Disk``
objects, and a trailing comma before the closing brace) is accepted and mapped
to canonical fields.

Signed datagrams (optional; the collector's ``signing`` setting says whether
they are checked): the message bytes, then a trailer that names the key and
carries the HMAC-SHA256 of exactly those bytes, in lowercase hex::

    <message bytes>\\n#hmac-sha256 <key id> <64 hex digits>

The marker ``\\n#`` cannot occur in JSON (a raw newline is not allowed in a
string, ``#`` not outside one), so the first marker ends the message; the
message is signed as sent, with no canonical form to agree on, and an
unsigned datagram is exactly what it was before signing existed.  ``encode``
and ``sign`` write it; ``split_signature`` reads it; the collector checks it
(``ingest.guard``).  ``parse_message`` itself ignores a trailer.

Decisions where DESIGN.md is silent:
- unknown extra fields are dropped, not rejected (senders may be newer);
- a ``total`` of 0 gives a used percentage of 0;
- ``ts`` may be late by any amount but not more than ``max_clock_skew_s`` in the
  future, and not before 2000-01-01.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NamedTuple

import orjson

from healthmon import sketch

MAX_TEXT = 256  # longest free-text field (host_info)
MAX_TS_TEXT = 64  # longest ISO-8601 ts string (names are at most 128 characters: NAME_RE)
MIN_TS = 946684800.0  # 2000-01-01T00:00:00Z: older timestamps are rejected
NAME_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}\Z")
IFACE_RE = re.compile(r"[A-Za-z0-9._:@-]{1,64}\Z")
_TRAILING_COMMA_RE = re.compile(rb",\s*([}\]])")


class Rejected(Exception):
    """A datagram that is not an acceptable message; ``reason`` is a short code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


# Rejection reasons, each with what it means (README lists them from here).
REASONS: dict[str, str] = {
    "oversized": "datagram larger than max_datagram_bytes",
    "not_utf8": "datagram is not valid UTF-8",
    "not_json": "datagram is not a JSON object (nor the seed003 format)",
    "not_object": "JSON value is not an object",
    "unknown_type": "the 'type' field names no known message type",
    "missing_field": "a required field is absent or null",
    "wrong_type": "a field has the wrong JSON type",
    "out_of_range": "a number is outside its allowed range",
    "bad_name": "a service/host/interface name breaks [A-Za-z0-9._:-]{1,128}",
    "bad_timestamp": "ts is not epoch seconds or ISO-8601, or is out of range",
    "free_exceeds_total": "free capacity is larger than total capacity",
    "bad_choice": "a field's value is not one of its allowed values (op: read|write; source: bcc|libbpf|diskstats|mock)",
    "unordered_buckets": "sketch buckets are not strictly increasing (a bucket is repeated or out of order)",
    "inconsistent_sketch": "bucket counts do not add up to count (empty buckets allowed only with mean_only), "
                           "or count/sum_us/max_us contradict each other",
    "bad_text": "a free-text field (host_info) is longer than 256 characters or holds control characters",
    "unsigned": "signing=required and the datagram carries no signature",
    "unknown_key": "the signature names a key id that is not in signing_keys_file",
    "bad_signature": "the signature trailer is malformed, or its HMAC does not match the message and key",
    "stale_signature": "a signed message's ts is further than signing_window_s from the collector's clock "
                       "(or older than the replay memory reaches under load)",
    "replayed": "the same signed datagram was already accepted within signing_window_s",
    "rate_limited": "its source address sent more than rate_limit_per_source datagrams/s (beyond rate_limit_burst): "
                    "counted, not dead-lettered",
    "internal_error": "the validator itself failed (a bug): the datagram is kept for inspection",
}


@dataclass(frozen=True)
class Field:
    """One field of a message type: name, kind and allowed range."""

    name: str
    kind: str  # "name" | "text" | "ts" | "number" | "net" | "choice" | "int" | "buckets" | "bool"
    required: bool = True
    minimum: float | None = None
    maximum: float | None = None
    doc: str = ""
    choices: tuple[str, ...] = ()  # kind "choice": the allowed values


# Minimum of a number that must be > 0: the smallest positive double (keeps the range check one comparison).
POSITIVE = math.ulp(0.0)
# Largest count (per message, per bucket): exact in a double, so sums stay exact everywhere.
MAX_COUNT = 2**53 - 1
DISK_OPS = ("read", "write")
LATENCY_SOURCES = ("bcc", "libbpf", "diskstats", "mock")


HEALTH_FIELDS: tuple[Field, ...] = (
    Field("service", "name", doc="service name, 1-128 chars of [A-Za-z0-9._:-]"),
    Field("ts", "ts", doc="UTC instant: epoch seconds or ISO-8601"),
    Field("cpu_pct", "number", minimum=0, maximum=100, doc="CPU use in percent"),
    Field("ram_total_gb", "number", minimum=0, doc="RAM size, GB"),
    Field("ram_free_gb", "number", minimum=0, doc="free RAM, GB"),
    Field("disk_total_gb", "number", minimum=0, doc="disk size, GB"),
    Field("disk_free_gb", "number", minimum=0, doc="free disk, GB"),
    Field("host", "name", required=False, doc="host the service runs on"),
    Field("net", "net", required=False, doc="per interface {rx_bps, tx_bps}"),
)

# Fields of every landed line, written by the collector: before the message fields.
ENVELOPE_FIELDS: tuple[Field, ...] = (
    Field("id", "name", doc="unique message id: <collector>-<run>-<n>"),
    Field("type", "name", doc="message type"),
    Field("recv_ts", "ts", doc="when the collector received it, epoch seconds"),
)

DISK_LATENCY_FIELDS: tuple[Field, ...] = (
    Field("host", "name", doc="host the device is in"),
    Field("device", "name", doc="block device, e.g. nvme0n1, vda, loop0 (same charset as names)"),
    Field("op", "choice", choices=DISK_OPS, doc="read | write"),
    Field("ts", "ts", doc="end of the interval: epoch seconds or ISO-8601"),
    Field("interval_s", "number", minimum=POSITIVE, maximum=3600, doc="length of the interval, s (0 < x <= 3600)"),
    Field("count", "int", minimum=0, maximum=MAX_COUNT, doc="I/Os completed in the interval"),
    Field("sum_us", "number", minimum=0, doc="sum of their latencies, microseconds"),
    Field("max_us", "number", minimum=0, doc="largest latency, microseconds"),
    Field("buckets", "buckets", doc="sparse latency sketch (healthmon.sketch): [[bucket, count], ...], buckets increasing"),
    Field("source", "choice", required=False, choices=LATENCY_SOURCES, doc="how the sender measured: bcc | libbpf | diskstats | mock"),
    Field("mean_only", "bool", required=False, doc="true: only the mean is known (diskstats); buckets may then be empty"),
)

# Static facts about a host, sent by the agent at start and every hour (landed; no view aggregates them).
HOST_INFO_FIELDS: tuple[Field, ...] = (
    Field("host", "name", doc="host name"),
    Field("ts", "ts", doc="when the agent read these facts"),
    Field("cpu_count", "int", minimum=1, maximum=1 << 20, doc="logical CPUs"),
    Field("cpu_cores", "int", required=False, minimum=1, maximum=1 << 20, doc="physical cores"),
    Field("cpu_model", "text", required=False, doc="CPU model name"),
    Field("ram_total_gb", "number", minimum=0, doc="memory size, GB"),
    Field("kernel", "text", doc="kernel release"),
    Field("os", "text", required=False, doc="operating system description"),
)

MESSAGE_TYPES: dict[str, tuple[Field, ...]] = {
    "health": HEALTH_FIELDS, "disk_latency": DISK_LATENCY_FIELDS, "host_info": HOST_INFO_FIELDS,
}

# (free, total) pairs checked together.
CAPACITY_PAIRS = (("ram_free_gb", "ram_total_gb"), ("disk_free_gb", "disk_total_gb"))

# Metrics derived from a health message; the views aggregate exactly these.
HEALTH_METRICS: tuple[str, ...] = ("cpu_pct", "ram_used_pct", "disk_used_pct")


# ---------------------------------------------------------------- parsing


def _seed003_to_canonical(obj: dict) -> dict:
    """Map the original mock client's keys to canonical fields."""
    out: dict = {"service": obj.get("serviceName")}
    ts_ns = obj.get("Timestamp")
    if isinstance(ts_ns, (int, float)) and not isinstance(ts_ns, bool):
        out["ts"] = ts_ns / 1e9
    else:
        out["ts"] = ts_ns
    cpu = obj.get("CPU")
    out["cpu_pct"] = cpu * 100.0 if _is_number(cpu) else cpu
    for key, prefix in (("RAM", "ram"), ("Disk", "disk")):
        part = obj.get(key)
        if not isinstance(part, dict):
            raise Rejected("wrong_type" if part is not None else "missing_field", key)
        out[f"{prefix}_total_gb"] = part.get("Total")
        out[f"{prefix}_free_gb"] = part.get("Free")
    return out


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parse_ts(value) -> float:
    """Epoch seconds from a number of seconds or an ISO-8601 string (naive = UTC)."""
    if _is_number(value):
        ts = float(value)
    elif isinstance(value, str):
        if len(value) > MAX_TS_TEXT:
            raise Rejected("bad_timestamp", f"ts string of {len(value)} characters (at most {MAX_TS_TEXT})")
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise Rejected("bad_timestamp", f"not ISO-8601: {value[:40]!r}") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        ts = parsed.timestamp()
    else:
        raise Rejected("bad_timestamp", f"ts has type {type(value).__name__}")
    if not math.isfinite(ts):
        raise Rejected("bad_timestamp", "not finite")
    return ts


def _validate(fields: tuple[Field, ...], obj: dict, recv_ts: float, max_skew_s: float) -> dict:
    out: dict = {}
    for f in fields:
        value = obj.get(f.name)
        if value is None:
            if f.required:
                raise Rejected("missing_field", f.name)
            continue
        if f.kind == "number":
            if not _is_number(value):
                raise Rejected("wrong_type", f"{f.name} must be a number")
            if not math.isfinite(value) or (f.minimum is not None and value < f.minimum) or (
                f.maximum is not None and value > f.maximum
            ):
                raise Rejected("out_of_range", f"{f.name}={value}")
            out[f.name] = value
        elif f.kind == "name":
            if not isinstance(value, str):
                raise Rejected("wrong_type", f"{f.name} must be a string")
            if not NAME_RE.match(value):
                raise Rejected("bad_name", f"{f.name}={value[:40]!r}")
            out[f.name] = value
        elif f.kind == "ts":
            ts = parse_ts(value)
            if ts < MIN_TS or ts > recv_ts + max_skew_s:
                raise Rejected("bad_timestamp", f"{f.name}={ts} out of range")
            out[f.name] = ts
        elif f.kind == "net":
            out[f.name] = _validate_net(value)
        elif f.kind == "choice":
            if not isinstance(value, str):
                raise Rejected("wrong_type", f"{f.name} must be a string")
            if value not in f.choices:
                raise Rejected("bad_choice", f"{f.name}={value[:40]!r}, not one of {'|'.join(f.choices)}")
            out[f.name] = value
        elif f.kind == "int":
            if not isinstance(value, int) or isinstance(value, bool):
                raise Rejected("wrong_type", f"{f.name} must be an integer")
            if (f.minimum is not None and value < f.minimum) or (f.maximum is not None and value > f.maximum):
                raise Rejected("out_of_range", f"{f.name}={value}")
            out[f.name] = value
        elif f.kind == "text":
            if not isinstance(value, str):
                raise Rejected("wrong_type", f"{f.name} must be a string")
            if len(value) > MAX_TEXT or not value.isprintable():
                raise Rejected("bad_text", f"{f.name}: {len(value)} chars")
            out[f.name] = value
        elif f.kind == "bool":
            if not isinstance(value, bool):
                raise Rejected("wrong_type", f"{f.name} must be true or false")
            out[f.name] = value
        elif f.kind == "buckets":
            out[f.name] = _validate_buckets(f.name, value)
    return out


def _validate_buckets(name: str, value) -> list[list[int]]:
    """A sparse sketch: [[bucket, count], ...], bucket 0..MAX_BUCKET increasing, count 1..MAX_COUNT."""
    if not isinstance(value, list):
        raise Rejected("wrong_type", f"{name} must be a list of [bucket, count] pairs")
    previous = -1
    for pair in value:
        if not isinstance(pair, list) or len(pair) != 2:
            raise Rejected("wrong_type", f"{name}: {str(pair)[:40]} is not a [bucket, count] pair")
        bucket, count = pair
        if type(bucket) is not int or type(count) is not int:  # noqa: E721 - bool is an int subclass, and not allowed
            raise Rejected("wrong_type", f"{name}: {str(pair)[:40]} must hold two integers")
        if not 0 <= bucket <= sketch.MAX_BUCKET:
            raise Rejected("out_of_range", f"{name}: bucket {bucket} not in 0..{sketch.MAX_BUCKET}")
        if not 1 <= count <= MAX_COUNT:
            raise Rejected("out_of_range", f"{name}: bucket {bucket} has count {count}")
        if bucket <= previous:
            raise Rejected("unordered_buckets", f"{name}: bucket {bucket} after {previous}")
        previous = bucket
    return value


def _check_disk_latency(out: dict) -> None:
    """The sketch agrees with count, and count, sum_us and max_us with each other."""
    count, sum_us, max_us = out["count"], out["sum_us"], out["max_us"]
    buckets = out["buckets"]
    in_buckets = sum(c for _, c in buckets)
    if buckets or not out.get("mean_only", False):
        if in_buckets != count:
            raise Rejected("inconsistent_sketch", f"bucket counts add up to {in_buckets}, count={count}")
    if count == 0:
        if sum_us or max_us:
            raise Rejected("inconsistent_sketch", f"count=0 with sum_us={sum_us}, max_us={max_us}")
    elif max_us > sum_us * (1 + 1e-9):
        raise Rejected("inconsistent_sketch", f"max_us={max_us} > sum_us={sum_us}")


def _validate_net(value) -> dict:
    if not isinstance(value, dict):
        raise Rejected("wrong_type", "net must be an object")
    out = {}
    for iface, rates in value.items():
        if not IFACE_RE.match(iface):
            raise Rejected("bad_name", f"net interface {iface[:40]!r}")
        if not isinstance(rates, dict):
            raise Rejected("wrong_type", f"net.{iface} must be an object")
        clean = {}
        for key in ("rx_bps", "tx_bps"):
            rate = rates.get(key)
            if rate is None:
                raise Rejected("missing_field", f"net.{iface}.{key}")
            if not _is_number(rate):
                raise Rejected("wrong_type", f"net.{iface}.{key} must be a number")
            if not math.isfinite(rate) or rate < 0:
                raise Rejected("out_of_range", f"net.{iface}.{key}={rate}")
            clean[key] = rate
        out[iface] = clean
    return out


def loads_lenient(data: bytes) -> object:
    """Strict JSON, or JSON with trailing commas before '}' / ']' (the seed003 client's habit).

    A signature trailer is ignored (only tried once the whole datagram failed, so unsigned datagrams pay nothing):
    whether signatures are checked is the collector's business (``signing``), not the schema's.
    """
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        pass
    try:
        return orjson.loads(_TRAILING_COMMA_RE.sub(rb"\1", data))
    except orjson.JSONDecodeError as exc:
        error = exc
    cut = data.find(SIGNATURE_MARKER)
    if cut >= 0:
        return loads_lenient(data[:cut])  # the message never holds the marker: one level at most
    raise Rejected("not_json", str(error)[:120]) from None


def parse_message(data: bytes, recv_ts: float, max_skew_s: float = 3600.0) -> dict:
    """Validate one datagram; return its canonical fields (with ``type``) or raise Rejected."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        raise Rejected("not_utf8") from None
    obj = loads_lenient(data)
    if not isinstance(obj, dict):
        raise Rejected("not_object", type(obj).__name__)
    if "serviceName" in obj and "service" not in obj:
        obj = _seed003_to_canonical(obj)
    msg_type = obj.get("type", "health")
    fields = MESSAGE_TYPES.get(msg_type) if isinstance(msg_type, str) else None
    if fields is None:
        raise Rejected("unknown_type", str(msg_type)[:40])
    out = _validate(fields, obj, recv_ts, max_skew_s)
    if msg_type == "health":
        for free, total in CAPACITY_PAIRS:
            if out[free] > out[total]:
                raise Rejected("free_exceeds_total", f"{free}={out[free]} > {total}={out[total]}")
    elif msg_type == "disk_latency":
        _check_disk_latency(out)
    return {"type": msg_type, **out}


# ---------------------------------------------------------------- derived schemas

_DUCKDB_KIND = {"text": "VARCHAR",
                "name": "VARCHAR", "ts": "DOUBLE", "number": "DOUBLE", "choice": "VARCHAR", "int": "BIGINT", "bool": "BOOLEAN",
                "buckets": "BIGINT[][]", "net": "MAP(VARCHAR, STRUCT(rx_bps DOUBLE, tx_bps DOUBLE))"}


def landed_fields(msg_type: str) -> tuple[Field, ...]:
    """Fields of a landed line of ``msg_type``: the envelope, then the message."""
    return ENVELOPE_FIELDS + MESSAGE_TYPES[msg_type]


def spark_schema(msg_type: str):
    """The Spark StructType of landed lines of ``msg_type``."""
    from pyspark.sql import types as T

    def spark_type(f: Field):
        if f.kind == "net":
            rates = T.StructType([T.StructField("rx_bps", T.DoubleType()), T.StructField("tx_bps", T.DoubleType())])
            return T.MapType(T.StringType(), rates)
        if f.kind == "buckets":
            return T.ArrayType(T.ArrayType(T.LongType()))
        simple = {"name": T.StringType, "text": T.StringType, "choice": T.StringType, "ts": T.DoubleType, "number": T.DoubleType,
                  "int": T.LongType, "bool": T.BooleanType}
        return simple[f.kind]()

    return T.StructType([T.StructField(f.name, spark_type(f), nullable=True) for f in landed_fields(msg_type)])


def duckdb_columns(msg_type: str) -> dict[str, str]:
    """DuckDB column types of landed lines of ``msg_type`` (for read_json(columns=...))."""
    return {f.name: _DUCKDB_KIND[f.kind] for f in landed_fields(msg_type)}


# ---------------------------------------------------------------- encoding (the wire format, written once)


SIGNATURE_MARKER = b"\n#hmac-sha256 "  # starts the trailer of a signed datagram
SIGNATURE_HEX_LEN = 64  # hex digits of an HMAC-SHA256
KEY_ID_RE = NAME_RE  # a key id: 1-128 characters of [A-Za-z0-9._:-]


class Signature(NamedTuple):
    """What a signed datagram says: the signed message bytes, the key id and the hex HMAC, as sent."""

    body: bytes
    key_id: bytes
    mac: bytes


def signer(secret: bytes) -> Callable[[bytes], bytes]:
    """The function ``body -> lowercase hex HMAC-SHA256 of body under secret`` (the key is prepared once)."""
    prepared = hmac.new(secret, digestmod=hashlib.sha256)

    def mac(body: bytes) -> bytes:
        h = prepared.copy()
        h.update(body)
        return h.hexdigest().encode("ascii")

    return mac


def sign(body: bytes, key_id: str, secret: bytes) -> bytes:
    """``body`` (a canonical or seed003 datagram) with its signature trailer."""
    if not KEY_ID_RE.match(key_id):
        raise ValueError(f"key id {key_id[:40]!r}: must be 1-128 characters of [A-Za-z0-9._:-]")
    return body + SIGNATURE_MARKER + key_id.encode("ascii") + b" " + signer(secret)(body)


def split_signature(data: bytes) -> Signature | None:
    """The parts of a signed datagram, None when it has no trailer; Rejected('bad_signature') when the trailer is malformed.

    The key id is not checked here: an id that names no key is ``unknown_key``, whatever its characters.
    """
    cut = data.find(SIGNATURE_MARKER)
    if cut < 0:
        return None
    key_id, space, mac = data[cut + len(SIGNATURE_MARKER):].partition(b" ")
    if not space or len(mac) != SIGNATURE_HEX_LEN:
        raise Rejected("bad_signature", f"malformed trailer {data[cut + 1:cut + 120]!r}")
    return Signature(data[:cut], key_id, mac)


def encode(message, key_id: str | None = None, secret: bytes | None = None) -> bytes:
    """One datagram of a canonical message (what senders put on the wire), signed when given a key id and its secret."""
    body = orjson.dumps(message)
    if key_id is None:
        return body
    if secret is None:
        raise ValueError("a key id needs its secret")
    return sign(body, key_id, secret)


def disk_latency_message(host: str, device: str, op: str, ts: float, interval_s: float, latencies: sketch.LatencySketch,
                         source: str | None = None, mean_only: bool = False) -> dict:
    """The canonical ``disk_latency`` message of one device, op and interval (``encode`` puts it on the wire)."""
    message = {
        "type": "disk_latency", "host": host, "device": device, "op": op, "ts": ts, "interval_s": interval_s,
        "count": latencies.count, "sum_us": latencies.sum_us, "max_us": latencies.max_us, "buckets": latencies.to_pairs(),
    }
    if source is not None:
        message["source"] = source
    if mean_only:
        message["mean_only"] = True
    return message


def encode_seed003(message: dict) -> bytes:
    """One datagram in the original mock client's format, trailing comma included."""
    return (
        "{\n"
        f'  "serviceName": "{message["service"]}",\n'
        f'  "Timestamp": {round(message["ts"] * 1e9)},\n'
        f'  "CPU": {message["cpu_pct"] / 100.0!r},\n'
        f'  "RAM": {{"Total": {message["ram_total_gb"]!r}, "Free": {message["ram_free_gb"]!r}}},\n'
        f'  "Disk": {{"Total": {message["disk_total_gb"]!r}, "Free": {message["disk_free_gb"]!r}}},\n'
        "}"
    ).encode()


def landed_line(message: dict, message_id: str, recv_ts: float) -> bytes:
    """One line of a landing segment: envelope fields, then the canonical message."""
    return orjson.dumps({"id": message_id, "recv_ts": recv_ts, **message}) + b"\n"
