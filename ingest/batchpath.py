"""The collector's batch path: a whole ``recvmmsg`` batch of canonical health datagrams checked and landed in a few C calls.

The fast path (``ingest.fastpath``) costs ~5 us of Python per datagram.  Here
the datagrams of one batch (up to 64) are joined with newlines and decoded by
msgspec in one call (``Decoder.decode_lines``) into a ``Struct`` generated
from the schema's field table (``schema.HEALTH_FIELDS``: names, kinds,
ranges; ``schema.MIN_TS``), so JSON syntax, types and ranges are checked in
C.  The rest is taken over the whole batch with builtins (``map``, ``min``,
``max``, set inclusion: no Python loop per datagram): names against the
names already seen valid (``schema.NAME_RE`` / ``schema.IFACE_RE`` only for
new ones; a regex per name in msgspec cost more than all the rest), the
checks between fields (``schema.CAPACITY_PAIRS``, ``ts`` not further than
``max_clock_skew_s`` in the future), the hour of ``ts``.  The envelope's
``id`` and ``recv_ts`` are set with ``map(setattr, ...)`` (``recv_ts``, the
same for the whole batch, as ``msgspec.Raw`` of what orjson writes for it;
``type`` is ``"health"`` by default) and ``Encoder.encode_lines`` writes all
the landed lines in one call.

Like the fast path it only ever *accepts*, and only whole batches: a batch
with anything else in it (a datagram that fails a check or is not a plain
canonical health message, one that does not start with ``{`` and end with
``}``, one that is not UTF-8 or is oversized, a number msgspec would write
differently from orjson, an optional field given as null, ``ts`` values in
two hours ...) gives ``None``, and the collector takes that batch datagram by
datagram as before (the fast path, then ``schema.parse_message``, which stays
the one authority on rejects and their reasons).  What it lands is byte for byte what
``landed_line(parse_message(...))`` lands (the collector's tests check it on
whole batches and on batches with a near miss in them).

One datagram, one message: ``decode_lines`` reads whitespace-separated JSON
values (it takes two objects from ``{..} {..}`` and skips blank lines), so
the batch is only taken when every datagram starts with ``{`` and ends with
``}`` and exactly one message per datagram came out.  A datagram left open
(``{"a":{}``) cannot run into the next one, which starts with ``{`` where
only ``,`` or a closing bracket may follow; so each datagram holds at least
one whole value, and with as many values as datagrams, exactly one.

Numbers left to the per-datagram path: orjson writes a float of 1e16 or more
in exponent form as ``1e+16``, msgspec as ``1e16`` (below that both write the
same shortest form, checked by the tests), and msgspec's integer bounds must
fit an int64.  So the generated types take floats in (-1e16, 1e16) and
integers that fit an int64 (within the field's own range): any other number
sends its batch to the per-datagram path, which lands it as
``parse_message`` does.
"""

from __future__ import annotations

import math
from collections import deque
from functools import partial
from itertools import chain, repeat
from operator import attrgetter, gt, is_not, itemgetter
from typing import Annotated, Any, Literal, Union

import msgspec
import orjson

from healthmon import schema

FLOAT_BOUND = 1e16  # floats from here on are written differently by msgspec (1e16) and orjson (1e+16)
INT_MIN, INT_MAX = -(2**63), 2**63 - 1  # integers taken: msgspec's bounds must fit an int64 (orjson keeps these as integers)
KNOWN_NAMES_MAX = 50_000  # names remembered as valid (of a fleet's services, hosts, interfaces); beyond it they start again
_OPEN, _CLOSE = b"{" * 4096, b"}" * 4096  # the first and the last byte of every datagram of a batch that can be taken
_first, _last = itemgetter(0), itemgetter(-1)
_exhaust = partial(deque, maxlen=0)  # runs an iterator in C, keeping nothing
_given = partial(is_not, msgspec.UNSET)


def _number_type(f: schema.Field):
    """An int or a float within the field's range and within what msgspec and orjson write alike (bool is neither, as in the schema)."""
    int_meta = msgspec.Meta(ge=INT_MIN if f.minimum is None else max(INT_MIN, math.ceil(f.minimum)),
                            le=INT_MAX if f.maximum is None else min(INT_MAX, math.floor(f.maximum)))
    low = {"gt": -FLOAT_BOUND} if f.minimum is None or f.minimum <= -FLOAT_BOUND else {"ge": f.minimum}
    high = {"lt": FLOAT_BOUND} if f.maximum is None or f.maximum >= FLOAT_BOUND else {"le": f.maximum}
    return Union[Annotated[int, int_meta], Annotated[float, msgspec.Meta(**low, **high)]]  # noqa: UP007 - a typing form msgspec reads


def landed_health_struct(fields: tuple[schema.Field, ...]) -> type[msgspec.Struct]:
    """The msgspec Struct of a landed health line: the envelope, then ``fields`` in table order; ValueError for a kind it does not know."""
    rate = _number_type(schema.Field("rate", "number", minimum=0))
    # gc=False: the decoded messages hold no reference cycles; untracked structs (and the net dicts holding only them,
    # which CPython then leaves untracked too) are cheaper to make and free and never set off the cyclic collector
    rates = msgspec.defstruct("Rates", [("rx_bps", rate), ("tx_bps", rate)], gc=False)  # other keys are dropped, as _validate_net does
    # The envelope first, as landed_line writes it.  Whatever a datagram says under "id" or "recv_ts" is decoded and
    # overwritten (unknown fields are dropped).  "type" is "health" whether the datagram says so or not, so it needs no
    # setting (a ~0.05 us pass over the batch).
    spec: list = [("id", Any, None), ("recv_ts", Any, None), ("type", Literal["health"], "health")]
    for f in fields:
        if f.kind == "number":
            kind = _number_type(f)
        elif f.kind == "name":
            kind = str  # checked against schema.NAME_RE by HealthBatchPath (remembering the valid ones)
        elif f.kind == "ts":
            kind = Annotated[float, msgspec.Meta(ge=schema.MIN_TS, lt=FLOAT_BOUND)]  # a float, as parse_ts makes it
        elif f.kind == "net":
            kind = dict[str, rates]  # interface names checked against schema.IFACE_RE by HealthBatchPath
        else:
            raise ValueError(f"health field {f.name} of kind {f.kind}: the batch path does not know it")
        # An absent optional field is UNSET, which the encoder leaves out as landed_line does.  A null one (absent to the
        # schema too) is refused, so its batch goes datagram by datagram: no omit_defaults (which compares every field
        # of every message with its default).
        spec.append((f.name, kind) if f.required else (f.name, Union[kind, msgspec.UnsetType], msgspec.UNSET))  # noqa: UP007
    # kw_only keeps the table order with defaults first
    return msgspec.defstruct("LandedHealth", spec, kw_only=True, gc=False)


def _all_valid(known: set, valid, names) -> bool:
    """Whether every name of ``names`` matches ``valid`` (a regex's match), remembering them in ``known`` (which holds UNSET)."""
    new = set(names) - known
    if not all(valid(name) for name in new):
        return False
    if len(known) + len(new) > KNOWN_NAMES_MAX:
        known.clear()
        known.add(msgspec.UNSET)
    known.update(new)
    return True


class HealthBatchPath:
    """``landed(batch, recv_ts, first)``: (hour index of ``ts``, landed lines) of a batch of valid canonical health datagrams, else None.

    The landed lines get the ids ``<id_prefix><first>``, ``<id_prefix><first + 1>`` ... in order.
    """

    def __init__(self, max_clock_skew_s: float, max_datagram_bytes: int, id_prefix: str) -> None:
        self.max_clock_skew_s = max_clock_skew_s
        self.max_datagram_bytes = max_datagram_bytes
        fields = schema.HEALTH_FIELDS
        if not any(f.kind == "ts" for f in fields):
            raise ValueError("health messages without a ts: the batch path does not know them")
        self.struct = landed_health_struct(fields)
        self.decode_lines = msgspec.json.Decoder(self.struct).decode_lines
        self.encode_lines = msgspec.json.Encoder().encode_lines
        self.ts = attrgetter(next(f.name for f in fields if f.kind == "ts"))
        self.capacity_pairs = [(attrgetter(free), attrgetter(total)) for free, total in schema.CAPACITY_PAIRS]
        self.names = [attrgetter(f.name) for f in fields if f.kind == "name"]
        self.nets = [attrgetter(f.name) for f in fields if f.kind == "net"]
        # services and hosts that matched schema.NAME_RE, interfaces that matched schema.IFACE_RE (kept apart: '@' is
        # only for interfaces, 65-128 characters only for names); UNSET stands for an absent optional name
        self.known_names: set = {msgspec.UNSET}
        self.known_ifaces: set = {msgspec.UNSET}
        self.id_prefix = id_prefix

    def landed(self, batch: list[bytes], recv_ts: float, first: int) -> tuple[float, bytes] | None:
        """The hour index of every ``ts`` of ``batch`` and its landed lines (ids numbered from ``first``), or None: one by one then."""
        n = len(batch)
        if not 0 < n <= len(_OPEN) or min(map(len, batch)) == 0 or max(map(len, batch)) > self.max_datagram_bytes:
            return None
        if bytes(map(_first, batch)) != _OPEN[:n] or bytes(map(_last, batch)) != _CLOSE[:n]:
            return None
        joined = b"\n".join(batch)
        if not joined.isascii():  # msgspec does not look at the bytes of the fields it skips: parse_message does
            try:
                joined.decode("utf-8")
            except UnicodeDecodeError:
                return None
        try:
            messages = self.decode_lines(joined)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return None
        if len(messages) != n:
            return None
        ts = self.ts
        hour = min(map(ts, messages)) // 3600
        latest = max(map(ts, messages))
        if latest > recv_ts + self.max_clock_skew_s or latest // 3600 != hour:
            return None
        for free, total in self.capacity_pairs:
            if any(map(gt, map(free, messages), map(total, messages))):
                return None
        for name in self.names:
            if not self.known_names.issuperset(map(name, messages)) and not _all_valid(
                    self.known_names, schema.NAME_RE.match, map(name, messages)):
                return None
        for net in self.nets:
            if not self.known_ifaces.issuperset(chain.from_iterable(filter(_given, map(net, messages)))) and not _all_valid(
                    self.known_ifaces, schema.IFACE_RE.match, chain.from_iterable(filter(_given, map(net, messages)))):
                return None
        _exhaust(map(setattr, messages, repeat("id", n), map(self.id_prefix.__add__, map(str, range(first, first + n)))))
        # recv_ts is the same for the whole batch: written once, by orjson as landed_line writes it, not by msgspec 64 times
        _exhaust(map(setattr, messages, repeat("recv_ts", n), repeat(msgspec.Raw(orjson.dumps(recv_ts)), n)))
        return hour, self.encode_lines(messages)
