"""Parsing of the API's query parameters (pure functions; errors are ``ApiError`` 400).

Decisions:

- ``from``/``to`` take epoch seconds (an int or float, e.g. ``1700000000`` or
  ``1700000000.5``) or ISO-8601 (``2024-01-01T10:00:00Z``, ``...+02:00``; a
  naive time is UTC).  ``to`` defaults to now, ``from`` to ``to`` minus
  ``api_default_range_s``.  ``from >= to`` is an error, and so is a range
  longer than ``api_max_range_days`` (a cap on the work one query may ask
  for; the message names the limit).  Times before the epoch or after year
  9999 are refused.
- A parameter that an endpoint does not know is an error (a typo such as
  ``form=`` would otherwise silently give the default range).
- ``step`` is one of 60s, 5m, 1h, 1d; the same steps spelled in seconds
  (``60``, ``300``, ``3600s``...) are accepted too; the answer names the step
  by its label.  Where retention has deleted the finer tiers of a range, the
  step is at least an hour (or a day), asked or not (``min_step``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime

from healthmon.schema import NAME_RE
from serving.errors import bad_parameter

MAX_TS = 253402300800.0  # 10000-01-01T00:00:00Z

STEPS: dict[str, int] = {"60s": 60, "5m": 300, "1h": 3600, "1d": 86400}
STEP_LABELS: dict[int, str] = {s: label for label, s in STEPS.items()}
TARGET_POINTS = 500  # the default step is the smallest that gives at most this many points

_NUMBER_RE = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\Z")
_STEP_RE = re.compile(r"(\d+)\s*([smhd]?)\Z")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def check_known(args: Mapping[str, str], allowed: Iterable[str]) -> None:
    allowed = tuple(allowed)
    unknown = sorted(set(args) - set(allowed))
    if unknown:
        known = ", ".join(allowed) if allowed else "none"
        raise bad_parameter(f"unknown parameter {unknown[0]!r} (known: {known})")


def parse_time(name: str, raw: str) -> float:
    """Epoch seconds from epoch seconds or ISO-8601 text; ApiError 400 otherwise."""
    text = raw.strip()
    if not text:
        raise bad_parameter(f"{name}: empty")
    if _NUMBER_RE.match(text):
        ts = float(text)
    else:
        try:
            parsed = datetime.fromisoformat(text[:-1] + "+00:00" if text[-1] in "Zz" else text)
        except ValueError:
            raise bad_parameter(f"{name}={raw[:60]!r}: not epoch seconds nor ISO-8601") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        try:
            ts = parsed.timestamp()
        except (OverflowError, ValueError):
            raise bad_parameter(f"{name}={raw[:60]!r}: out of range") from None
    if not math.isfinite(ts) or ts < 0 or ts >= MAX_TS:
        raise bad_parameter(f"{name}={raw[:60]!r}: out of range (1970-01-01 .. 9999-12-31)")
    return ts


def parse_range(args: Mapping[str, str], now: float, default_range_s: float, max_range_days: float = math.inf) -> tuple[float, float]:
    """(from, to) in epoch seconds, with the defaults; ApiError 400 when from >= to or to - from > max_range_days."""
    raw_to = args.get("to")
    to = parse_time("to", raw_to) if raw_to is not None else float(now)
    raw_from = args.get("from")
    frm = parse_time("from", raw_from) if raw_from is not None else to - default_range_s
    frm = max(frm, 0.0)
    if frm >= to:
        raise bad_parameter(f"from ({iso(frm)}) must be before to ({iso(to)})")
    if to - frm > max_range_days * 86400:
        raise bad_parameter(f"from ({iso(frm)}) to ({iso(to)}) is {(to - frm) / 86400:.6g} days, longer than "
                            f"api_max_range_days={max_range_days:g}")
    return frm, to


def parse_service(raw: str | None) -> str | None:
    if raw is None:
        return None
    if not NAME_RE.match(raw):
        raise bad_parameter(f"service={raw[:60]!r}: not a service name ([A-Za-z0-9._:-]{{1,128}})")
    return raw


def parse_step(raw: str) -> int:
    """Step in seconds from '60s' | '5m' | '1h' | '1d' (or the same in seconds)."""
    m = _STEP_RE.match(raw.strip().lower())
    step = int(m.group(1)) * _UNIT_S[m.group(2)] if m else None
    if step not in STEP_LABELS:
        raise bad_parameter(f"step={raw[:20]!r}: must be one of {', '.join(STEPS)}")
    return step


def allowed_steps(window_s: int) -> list[int]:
    """Steps a view with base window ``window_s`` can answer: at least a window and a multiple of it."""
    return [s for s in sorted(STEP_LABELS) if s >= window_s and s % window_s == 0]


def bucket_bounds(frm: float, to: float, step: int) -> tuple[int, int]:
    """(first bucket start, number of buckets) of a range: buckets are multiples of ``step`` that start before ``to``."""
    first = math.floor(frm / step) * step
    end = math.ceil(to)
    return first, max(1, -(-(end - first) // step))


def choose_step(raw: str | None, frm: float, to: float, window_s: int, max_points: int, min_step: int = 0) -> tuple[int, int, int]:
    """(step, first bucket, number of points) of a series; ApiError 400 for a bad step or too many points.

    ``min_step`` (an hour or a day, from ``serving.queries.tier_span``) raises a finer step, asked or default.
    """
    steps = allowed_steps(window_s)
    if raw is not None:
        step = parse_step(raw)
        if step not in steps:
            raise bad_parameter(
                f"step={raw[:20]!r}: the base window is {window_s}s; use one of {', '.join(STEP_LABELS[s] for s in steps)}"
            )
        step = max(step, min_step)
    else:
        step = next((s for s in steps if s >= min_step and bucket_bounds(frm, to, s)[1] <= TARGET_POINTS), steps[-1])
    first, n = bucket_bounds(frm, to, step)
    if n > max_points:
        raise bad_parameter(f"{n} points of step {STEP_LABELS[step]} is more than the limit of {max_points}; use a larger step")
    return step, first, n


def iso(ts: float | None) -> str | None:
    """ISO-8601 UTC with 'Z': whole seconds when ``ts`` is whole, else milliseconds."""
    if ts is None:
        return None
    dt = datetime.fromtimestamp(ts, UTC)
    spec = "seconds" if float(ts).is_integer() else "milliseconds"
    return dt.replace(tzinfo=None).isoformat(timespec=spec) + "Z"
