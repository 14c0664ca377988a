"""The latency sketch (healthmon/sketch.py), property-based: quantiles within 2%, exact merges, the wire form.

The exact quantile the sketch approximates is ``sorted(samples)[floor(q * (n - 1))]``.  Sample sets come from
two strategies: lists of floats drawn by hypothesis directly (shrinkable, up to a few hundred values) and
seeded generators of several distributions, heavy tails included (up to 5000 values).
"""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from healthmon import sketch
from healthmon.sketch import ALPHA, GAMMA, MAX_BUCKET, MAX_US, LatencySketch, bucket_of, bucket_value, quantile

# No example database in the work tree; no deadline (sorting 5000 samples varies with the machine's load).
PROPERTY = settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
TOLERANCE = ALPHA * (1 + 1e-9)  # 2%, plus float rounding at bucket boundaries
QUANTILES = (0.0, 0.5, 0.95, 0.99, 1.0)


def _clip(value: float) -> float:
    return min(MAX_US, max(1.0, value))


DISTRIBUTIONS = {
    "uniform": lambda rng: rng.uniform(1.0, 10_000.0),
    "lognormal_nvme": lambda rng: rng.lognormvariate(math.log(80.0), 0.7),
    "lognormal_wide": lambda rng: rng.lognormvariate(math.log(500.0), 2.5),
    "exponential": lambda rng: 1.0 + rng.expovariate(1 / 200.0),
    "pareto": lambda rng: 50.0 * rng.paretovariate(1.1),  # heavy tail: infinite variance
    "pareto_extreme": lambda rng: rng.paretovariate(0.3),  # tail reaching MAX_US
    "bimodal": lambda rng: rng.gauss(90.0, 10.0) if rng.random() < 0.97 else rng.gauss(20_000.0, 4_000.0),
    "few_values": lambda rng: rng.choice((1.0, 7.0, 7.0, 100.0, GAMMA**300)),
    "integers": lambda rng: float(rng.randint(1, 5000)),
}


@st.composite
def generated_samples(draw) -> list[float]:
    """1..5000 samples of one of DISTRIBUTIONS, from a drawn seed."""
    name = draw(st.sampled_from(sorted(DISTRIBUTIONS)))
    n = draw(st.integers(1, 5000))
    rng = random.Random(draw(st.integers(0, 2**32)))
    return [_clip(DISTRIBUTIONS[name](rng)) for _ in range(n)]


drawn_samples = st.lists(st.floats(min_value=1.0, max_value=MAX_US, allow_nan=False, allow_infinity=False), min_size=1, max_size=300)
any_samples = st.one_of(generated_samples(), drawn_samples)


def sketch_of(samples) -> LatencySketch:
    result = LatencySketch()
    for value in samples:
        result.add(value)
    return result


def exact_quantile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[math.floor(q * (len(ordered) - 1))]


def relative_error(estimate: float, exact: float) -> float:
    return abs(estimate - exact) / exact


# ---------------------------------------------------------------- quantiles within 2%


@PROPERTY
@given(samples=any_samples, q=st.floats(min_value=0.0, max_value=1.0))
def test_quantiles_within_two_percent(samples, q):
    s = sketch_of(samples)
    for quant in (*QUANTILES, q):
        exact = exact_quantile(samples, quant)
        estimate = s.quantile(quant)
        assert relative_error(estimate, exact) <= TOLERANCE, (quant, exact, estimate)


@PROPERTY
@given(samples=generated_samples(), parts=st.integers(2, 20), q=st.floats(min_value=0.0, max_value=1.0))
def test_quantiles_of_merged_sketches_within_two_percent(samples, parts, q):
    """What the views do: one sketch per interval, merged over a window, quantiles off the merged counts."""
    merged = LatencySketch()
    for i in range(parts):
        merged.merge(sketch_of(samples[i::parts]))
    for quant in (*QUANTILES, q):
        assert relative_error(quantile(merged.to_pairs(), quant), exact_quantile(samples, quant)) <= TOLERANCE


def test_the_two_percent_bound_is_tight():
    """The tolerance is not loose: values just inside a bucket boundary are read back ~2% off, and a 1% bound would fail."""
    edges = [GAMMA**i * factor for i in range(2, 400) for factor in (1 - 1e-12, 1 + 1e-7)]
    worst = max(relative_error(sketch_of([v]).quantile(0.5), v) for v in edges)
    assert 0.0199 < worst <= TOLERANCE


def test_quantile_of_nothing_is_none():
    assert LatencySketch().quantile(0.5) is None
    assert quantile([], 0.99) is None
    assert quantile([(5, 0)], 0.5) is None


def test_quantile_ranks():
    """rank = floor(q * (n - 1)): 100 samples 1..100 µs -> p50 is the 50th value, p99 the 99th, p100 the largest."""
    s = sketch_of(range(1, 101))
    assert s.quantile(0.5) == bucket_value(bucket_of(50))
    assert s.quantile(0.99) == bucket_value(bucket_of(99))
    assert s.quantile(1.0) == bucket_value(bucket_of(100))
    assert s.quantile(0.0) == 1.0


# ---------------------------------------------------------------- exact merges


@PROPERTY
@given(
    values=st.lists(st.integers(1, 10**7), min_size=1, max_size=2000),
    cuts=st.lists(st.integers(0, 2000), max_size=10),
)
def test_merge_of_a_split_is_exact(values, cuts):
    """Integer µs (as kernel tracers give): sums are exact in doubles, so merged == whole in every field."""
    samples = [float(v) for v in values]
    bounds = sorted({0, len(samples), *(min(c, len(samples)) for c in cuts)})
    merged = LatencySketch()
    for start, end in zip(bounds, bounds[1:], strict=False):
        merged.merge(sketch_of(samples[start:end]))
    whole = sketch_of(samples)
    assert merged.buckets == whole.buckets
    assert merged.to_pairs() == whole.to_pairs()
    assert merged.count == whole.count == len(samples)
    assert merged.sum_us == whole.sum_us == sum(values)
    assert merged.max_us == whole.max_us == max(values)


@PROPERTY
@given(samples=any_samples, seed=st.integers(0, 2**32))
def test_merge_of_a_shuffled_split_is_exact_but_float_sums(samples, seed):
    """Any float samples, merged in any grouping: buckets, count and max exactly; sum up to float rounding."""
    rng = random.Random(seed)
    shuffled = samples[:]
    rng.shuffle(shuffled)
    parts = [LatencySketch() for _ in range(rng.randint(1, 8))]
    for value in shuffled:
        rng.choice(parts).add(value)
    merged = LatencySketch()
    for part in parts:
        merged.merge(part)
    whole = sketch_of(samples)
    assert merged.buckets == whole.buckets
    assert merged.count == whole.count
    assert merged.max_us == whole.max_us
    assert merged.sum_us == pytest.approx(whole.sum_us, rel=1e-12)


def test_merge_with_empty_changes_nothing():
    s = sketch_of([3.0, 400.0, 90.5])
    before = (dict(s.buckets), s.count, s.sum_us, s.max_us)
    s.merge(LatencySketch())
    assert (s.buckets, s.count, s.sum_us, s.max_us) == before
    empty = LatencySketch()
    empty.merge(s)
    assert (empty.buckets, empty.count, empty.sum_us, empty.max_us) == before


def test_add_with_a_count():
    many = LatencySketch()
    many.add(250.0, count=4)
    one_by_one = sketch_of([250.0] * 4)
    assert (many.buckets, many.count, many.sum_us, many.max_us) == (one_by_one.buckets, 4, 1000.0, 250.0)


# ---------------------------------------------------------------- the wire form


@PROPERTY
@given(samples=any_samples)
def test_pairs_round_trip(samples):
    s = sketch_of(samples)
    pairs = s.to_pairs()
    assert all(isinstance(b, int) and isinstance(c, int) and c >= 1 and 0 <= b <= MAX_BUCKET for b, c in pairs)
    assert all(a[0] < b[0] for a, b in zip(pairs, pairs[1:], strict=False))  # strictly increasing
    assert sum(c for _, c in pairs) == s.count == len(samples)
    again = LatencySketch.from_pairs(pairs, s.sum_us, s.max_us)
    assert (again.buckets, again.count, again.sum_us, again.max_us) == (s.buckets, s.count, s.sum_us, s.max_us)
    assert again.to_pairs() == pairs
    for q in QUANTILES:
        assert again.quantile(q) == s.quantile(q) == quantile(pairs, q)


def test_from_pairs_adds_repeated_buckets_and_tuples():
    s = LatencySketch.from_pairs([(10, 2), [10, 3], (4, 1)])
    assert s.buckets == {10: 5, 4: 1} and s.count == 6
    assert s.to_pairs() == [[4, 1], [10, 5]]


def test_to_pairs_skips_empty_buckets():
    s = LatencySketch.from_pairs([(3, 0), (7, 2)])
    assert s.to_pairs() == [[7, 2]]


# ---------------------------------------------------------------- bucket boundaries


def test_bucket_zero_and_the_last_bucket():
    assert bucket_of(0.0) == bucket_of(0.5) == bucket_of(1.0) == 0
    assert bucket_value(0) == 1.0
    assert bucket_of(math.nextafter(1.0, 2.0)) == 1
    assert bucket_of(MAX_US) == MAX_BUCKET
    assert bucket_of(MAX_US * 10) == bucket_of(1e300) == MAX_BUCKET  # larger latencies count in the last bucket
    assert GAMMA ** (MAX_BUCKET - 1) < MAX_US <= GAMMA**MAX_BUCKET
    assert sketch.MAX_BUCKET == 519  # the boundaries are part of the wire format: changing them breaks stored sketches


@pytest.mark.parametrize("i", range(1, MAX_BUCKET + 1))
def test_values_next_to_a_boundary(i):
    """Just below GAMMA**i is bucket i, just above is bucket i + 1; the boundary itself is read back within 2%."""
    edge = GAMMA**i
    assert bucket_of(edge * (1 - 1e-12)) == i
    if i < MAX_BUCKET:
        assert bucket_of(edge * (1 + 1e-12)) == i + 1
    assert bucket_of(edge) in (i, i + 1)
    assert relative_error(bucket_value(bucket_of(edge)), edge) <= TOLERANCE
    assert relative_error(bucket_value(i), GAMMA ** (i - 1)) == pytest.approx(ALPHA)  # both ends of the bucket are 2% off
    assert relative_error(bucket_value(i), edge) == pytest.approx(ALPHA)


ROUNDED_UP = [i for i in range(1, MAX_BUCKET + 1) if bucket_of(GAMMA**i) != i]


def test_value_exactly_at_a_boundary_is_in_the_lower_bucket():
    assert ROUNDED_UP == []


@PROPERTY
@given(a=st.floats(min_value=0.0, max_value=2 * MAX_US), b=st.floats(min_value=0.0, max_value=2 * MAX_US))
def test_bucket_of_is_monotone(a, b):
    low, high = sorted((a, b))
    assert bucket_of(low) <= bucket_of(high)
    assert 0 <= bucket_of(low) <= MAX_BUCKET
