"""The latency sketch: fixed log-spaced buckets that merge exactly.

A latency in microseconds falls in bucket ``i`` when
``GAMMA**(i-1) < value <= GAMMA**i`` (bucket 0 holds everything <= 1 µs),
with ``GAMMA = (1 + ALPHA) / (1 - ALPHA)``.  Every value of bucket ``i`` is
within ``ALPHA`` (2%) relative error of the bucket's representative value
``2 * GAMMA**i / (GAMMA + 1)``, so any quantile read from the buckets is
within 2% of the exact quantile of the samples (the DDSketch construction).

The boundaries are fixed here, once, for every part of the system: the agent
fills buckets, the collector validates them, batch and speed add bucket
counts per window (a plain sum: merging is exact), and serving reads
quantiles off merged counts.  On the wire and in views a sketch is sparse:
``[[bucket, count], ...]`` for the buckets that are not empty.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

ALPHA = 0.02
GAMMA = (1 + ALPHA) / (1 - ALPHA)
_LOG_GAMMA = math.log(GAMMA)
MAX_US = 1e9  # 1000 s: larger latencies count in the last bucket
MAX_BUCKET = math.ceil(math.log(MAX_US) / _LOG_GAMMA)


def bucket_of(value_us: float) -> int:
    """The bucket of a latency in microseconds."""
    if value_us <= 1.0:
        return 0
    b = math.ceil(math.log(value_us) / _LOG_GAMMA)
    if b > 1 and GAMMA ** (b - 1) >= value_us:  # log rounding put a value on a boundary one bucket too high
        b -= 1
    return min(MAX_BUCKET, max(1, b))


def bucket_value(bucket: int) -> float:
    """The representative latency (µs) of a bucket: within ALPHA of every value in it."""
    if bucket <= 0:
        return 1.0
    return 2.0 * GAMMA**bucket / (GAMMA + 1.0)


def quantile(buckets: Iterable[tuple[int, int]], q: float) -> float | None:
    """The ``q`` quantile (0..1) of a distribution given as (bucket, count) pairs; None when empty.

    The rank is ``q * (n - 1)`` (the exact quantile it approximates is
    ``sorted(samples)[floor(q * (n - 1))]``).
    """
    pairs = sorted((int(b), int(c)) for b, c in buckets if c)
    total = sum(c for _, c in pairs)
    if total == 0:
        return None
    rank = math.floor(q * (total - 1))
    seen = 0
    for bucket, count in pairs:
        seen += count
        if seen > rank:
            return bucket_value(bucket)
    return bucket_value(pairs[-1][0])


class LatencySketch:
    """Count, sum, max and bucket counts of latencies (µs); ``merge`` is exact."""

    __slots__ = ("buckets", "count", "max_us", "sum_us")

    def __init__(self) -> None:
        self.buckets: dict[int, int] = {}
        self.count = 0
        self.sum_us = 0.0
        self.max_us = 0.0

    def add(self, value_us: float, count: int = 1) -> None:
        b = bucket_of(value_us)
        self.buckets[b] = self.buckets.get(b, 0) + count
        self.count += count
        self.sum_us += value_us * count
        if value_us > self.max_us:
            self.max_us = value_us

    def merge(self, other: LatencySketch) -> None:
        for b, c in other.buckets.items():
            self.buckets[b] = self.buckets.get(b, 0) + c
        self.count += other.count
        self.sum_us += other.sum_us
        self.max_us = max(self.max_us, other.max_us)

    def quantile(self, q: float) -> float | None:
        return quantile(self.buckets.items(), q)

    def to_pairs(self) -> list[list[int]]:
        """The sparse wire form: [[bucket, count], ...] in bucket order."""
        return [[b, c] for b, c in sorted(self.buckets.items()) if c]

    @classmethod
    def from_pairs(cls, pairs: Iterable[Iterable[int]], sum_us: float = 0.0, max_us: float = 0.0) -> LatencySketch:
        sketch = cls()
        for b, c in pairs:
            sketch.buckets[int(b)] = sketch.buckets.get(int(b), 0) + int(c)
        sketch.count = sum(sketch.buckets.values())
        sketch.sum_us = sum_us
        sketch.max_us = max_us
        return sketch
