"""Simulated NVMe drives: per-interval latency sketches of simulated I/Os.

Each drive and op (read, write) yields one ``disk_latency`` message per
interval: a few hundred simulated per-I/O latencies, aggregated into a
``healthmon.sketch.LatencySketch`` as a real agent would.  Latencies are
log-normal around the drive's own median, with a per-interval noise on the
median; a healthy NVMe drive reads at p50 ~80 µs, p99 ~400 µs, and writes a
bit slower.

With the ``degrading_drive`` scenario the LAST drive's tail grows with the
elapsed (scenario) time: its p99 doubles every ``DOUBLING_S`` seconds (the log-normal's
spread widens, the median stays), up to ``MAX_GROWTH`` times the healthy
p99; the other drives stay healthy.

Values are a pure function of the seed, the drive, the op and the elapsed
time (never the wall clock or the order of calls), so the same seed gives
the same sketches run after run, and any elapsed time can be simulated
directly.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from healthmon.schema import DISK_OPS, disk_latency_message
from healthmon.sketch import LatencySketch

DRIVES_PER_HOST = 2
Z99 = 2.3263478740408408  # the standard normal's 0.99 quantile
DOUBLING_S = 180.0  # degrading drive: p99 doubles every 3 minutes of elapsed time ...
MAX_GROWTH = 64.0  # ... up to 64 times the healthy p99 (after 18 minutes)
SAMPLES = (200, 400)  # simulated I/Os per drive, op and interval
MEDIAN_NOISE = 0.05  # per-interval log-normal noise on the median


@dataclass(frozen=True)
class DriveProfile:
    """Static traits of one simulated drive: where it is and its healthy latencies (µs)."""

    host: str
    device: str
    read_p50_us: float
    read_p99_us: float
    write_p50_us: float
    write_p99_us: float
    degrading: bool = False


def make_drives(count: int, seed: int, scenario: str = "steady") -> list[DriveProfile]:
    """``count`` deterministic drives, ``DRIVES_PER_HOST`` per host (host-00/nvme0n1, host-00/nvme1n1, host-01/nvme0n1, ...)."""
    rng = random.Random(f"drives:{seed}")
    drives = []
    for i in range(count):
        speed = rng.uniform(0.9, 1.1)
        drives.append(
            DriveProfile(
                host=f"host-{i // DRIVES_PER_HOST:02d}",
                device=f"nvme{i % DRIVES_PER_HOST}n1",
                read_p50_us=80.0 * speed,
                read_p99_us=400.0 * speed * rng.uniform(0.9, 1.1),
                write_p50_us=100.0 * speed,
                write_p99_us=500.0 * speed * rng.uniform(0.9, 1.1),
                degrading=scenario == "degrading_drive" and i == count - 1,
            )
        )
    return drives


def tail_growth(elapsed_s: float) -> float:
    """How many times its healthy p99 the degrading drive's p99 is after ``elapsed_s``."""
    return min(MAX_GROWTH, 2.0 ** (max(0.0, elapsed_s) / DOUBLING_S))


def simulate(drive: DriveProfile, op: str, seed: int, elapsed_s: float) -> LatencySketch:
    """The sketch of one interval's simulated I/Os of ``drive`` and ``op``, ending at ``elapsed_s``."""
    rng = random.Random(f"{seed}:{drive.host}/{drive.device}:{op}:{elapsed_s:.6f}")
    p50, p99 = (drive.read_p50_us, drive.read_p99_us) if op == "read" else (drive.write_p50_us, drive.write_p99_us)
    sigma = math.log(p99 / p50) / Z99
    if drive.degrading:
        sigma += math.log(tail_growth(elapsed_s)) / Z99  # p99 x growth, median unchanged
    mu = math.log(p50) + rng.gauss(0.0, MEDIAN_NOISE)
    sketch = LatencySketch()
    for _ in range(rng.randint(*SAMPLES)):
        sketch.add(max(1.0, round(rng.lognormvariate(mu, sigma), 3)))
    return sketch


def drive_messages(drives: list[DriveProfile], seed: int, elapsed_s: float, ts: float, interval_s: float) -> list[dict]:
    """One ``disk_latency`` message per drive and op for the interval ending at ``elapsed_s`` (sent at ``ts``)."""
    return [
        disk_latency_message(drive.host, drive.device, op, ts, interval_s, simulate(drive, op, seed, elapsed_s), source="mock")
        for drive in drives
        for op in DISK_OPS
    ]
