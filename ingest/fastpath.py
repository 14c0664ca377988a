"""The collector's fast path: a canonical health datagram checked and turned into its landed line in one step.

Nearly all of the traffic is plain canonical ``health`` messages.  For them,
``schema.parse_message`` followed by ``schema.landed_line`` costs ~9 us per
datagram, mostly in the generic loop over the field table and two dict
copies.  ``HealthFastPath`` applies the same checks to that one shape and
builds the landed line in the same step.  Its checking function is generated
once, from the same field table (``schema.HEALTH_FIELDS``: names, kinds,
ranges; ``schema.CAPACITY_PAIRS``, ``schema.MIN_TS``, ``schema.NAME_RE``,
``schema.IFACE_RE``), as straight-line code with the ranges as constants (as
``dataclasses`` generates ``__init__``): no loop, no per-field dispatch, ~40%
less work than a loop over the table.  ``HealthFastPath.source`` shows it.

It only ever *accepts*: anything that is not plainly a valid canonical health
message (another type, the seed003 format, an ISO-8601 ``ts``, a signature
trailer, a missing field, a value out of range, broken JSON ...) gives
``None``, and the collector then asks ``schema.parse_message``, which stays the
one authority on what is rejected and why.  What it accepts, it lands exactly
as ``landed_line(parse_message(...))`` would, byte for byte (the collector's
tests check that on valid datagrams and on near misses of every kind).
"""

from __future__ import annotations

import sys

import orjson

from healthmon import schema

_LARGEST = sys.float_info.max  # bound of a number without one: still rejects inf and nan, as parse_message does
KNOWN_NAMES_MAX = 50_000  # names remembered as valid (of a fleet's services, hosts, interfaces); beyond it they start again


class HealthFastPath:
    """``landed(data, recv_ts, message_id)``: the landed line and ``ts`` of a valid canonical health datagram, else None."""

    def __init__(self, max_clock_skew_s: float) -> None:
        self.max_clock_skew_s = max_clock_skew_s
        # names that matched schema.NAME_RE (services, hosts), interface names that matched schema.IFACE_RE: a set
        # lookup instead of the regex
        self.known_names: set[str] = set()
        self.known_ifaces: set[str] = set()
        self.source = _generate(schema.HEALTH_FIELDS)
        namespace = {
            "loads": orjson.loads, "dumps": orjson.dumps, "JSONDecodeError": orjson.JSONDecodeError,
            "APPEND_NEWLINE": orjson.OPT_APPEND_NEWLINE, "MIN_TS": schema.MIN_TS, "SKEW": max_clock_skew_s,
            "name_ok": schema.NAME_RE.match, "iface_ok": schema.IFACE_RE.match, "known_names": self.known_names,
            "known_ifaces": self.known_ifaces, "KNOWN_NAMES_MAX": KNOWN_NAMES_MAX,
        }
        exec(compile(self.source, "<healthmon fast path>", "exec"), namespace)  # the code generated just above, from the field table
        self.landed = namespace["landed"]


def _generate(fields: tuple[schema.Field, ...]) -> str:
    """The source of ``landed(data, recv_ts, message_id)`` for ``fields``; ValueError for a kind it does not know."""
    number = "type({v}) is not float and type({v}) is not int or not {low!r} <= {v} <= {high!r}"
    code = [
        "def landed(data, recv_ts, message_id):",
        "    try:",
        "        obj = loads(data)",
        "    except JSONDecodeError:",
        "        return None",
        "    if type(obj) is not dict or obj.get('type', 'health') != 'health':",
        "        return None",
        "    get = obj.get",
    ]
    ts_var = None
    variables = {}
    for i, f in enumerate(fields):
        v = variables[f.name] = f"v{i}"
        code.append(f"    {v} = get({f.name!r})")
        check: list[str] = []
        if f.kind == "number":
            low = -_LARGEST if f.minimum is None else f.minimum
            high = _LARGEST if f.maximum is None else f.maximum
            check = [f"if {number.format(v=v, low=low, high=high)}:", "    return None"]
        elif f.kind == "name":
            check = [f"if type({v}) is not str:", "    return None",
                     f"if {v} not in known_names:",
                     f"    if not name_ok({v}):", "        return None",
                     "    if len(known_names) >= KNOWN_NAMES_MAX:", "        known_names.clear()",
                     f"    known_names.add({v})"]
        elif f.kind == "ts":
            ts_var = v
            check = [f"if type({v}) is not float and type({v}) is not int:", "    return None  # an ISO-8601 string: the schema's",
                     f"{v} = float({v})", f"if not MIN_TS <= {v} <= recv_ts + SKEW:", "    return None"]
        elif f.kind == "net":
            rates = number.format(v="rx", low=0, high=_LARGEST) + " or " + number.format(v="tx", low=0, high=_LARGEST)
            check = [f"if type({v}) is not dict:", "    return None",
                     "clean = {}",
                     f"for iface, rates in {v}.items():",
                     "    if type(rates) is not dict:", "        return None",
                     "    if iface not in known_ifaces:",
                     "        if not iface_ok(iface):", "            return None",
                     "        if len(known_ifaces) >= KNOWN_NAMES_MAX:", "            known_ifaces.clear()",
                     "        known_ifaces.add(iface)",
                     "    rx = rates.get('rx_bps')", "    tx = rates.get('tx_bps')",
                     f"    if {rates}:", "        return None",
                     "    clean[iface] = {'rx_bps': rx, 'tx_bps': tx}",
                     f"{v} = clean"]
        else:
            raise ValueError(f"health field {f.name} of kind {f.kind}: the fast path does not know it")
        if f.required:
            code += [f"    {line}" for line in check]
        else:
            code.append(f"    if {v} is not None:")
            code += [f"        {line}" for line in check]
    for free, total in schema.CAPACITY_PAIRS:
        code += [f"    if {variables[free]} > {variables[total]}:", "        return None"]
    if ts_var is None:
        raise ValueError("health messages without a ts: the fast path does not know them")
    # the landed line: envelope, then the fields in table order (optional ones only when present), as landed_line
    required = [f for f in fields if f.required]
    first_optional = next((i for i, f in enumerate(fields) if not f.required), len(fields))
    head = ", ".join(f"{f.name!r}: {variables[f.name]}" for f in fields[:first_optional])
    code.append(f"    out = {{'id': message_id, 'recv_ts': recv_ts, 'type': 'health', {head}}}")
    for f in fields[first_optional:]:
        if f in required:
            code.append(f"    out[{f.name!r}] = {variables[f.name]}")
        else:
            code += [f"    if {variables[f.name]} is not None:", f"        out[{f.name!r}] = {variables[f.name]}"]
    code.append(f"    return dumps(out, option=APPEND_NEWLINE), {ts_var}")
    return "\n".join(code) + "\n"
