"""Simulated services and what they report: profiles plus named scenarios.

A scenario turns a service profile and the time since the mock started into
the service's health at that moment.  Values depend only on the seed, the
elapsed time and the order of calls, never on the wall clock, so the same
seed and rate give the same values run after run.  ``steady`` and ``degrading_drive`` exist yet (in the
latter the services are steady and the last simulated drive's latency tail grows: ``mock_services/drives.py``);
later scenarios (cpu_spike, memory_leak, disk_fill, silent, flapping, ...) plug into ``SCENARIOS``.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

SERVICE_NAMES = (
    "api-gateway", "auth", "billing", "catalog", "checkout", "search", "inventory", "notifications",
    "payments", "recommendations", "shipping", "TV", "users", "reports", "media", "chat",
)


@dataclass(frozen=True)
class ServiceProfile:
    """Static traits of one simulated service."""

    name: str
    host: str
    cpu_base: float  # percent
    cpu_amplitude: float  # percent, daily-ish wave
    ram_total_gb: float
    ram_used_base: float  # fraction
    disk_total_gb: float
    disk_used_base: float  # fraction
    phase: float


def make_profiles(count: int, seed: int) -> list[ServiceProfile]:
    """``count`` deterministic service profiles."""
    rng = random.Random(seed)
    profiles = []
    for i in range(count):
        base = SERVICE_NAMES[i % len(SERVICE_NAMES)]
        name = base if i < len(SERVICE_NAMES) else f"{base}-{i // len(SERVICE_NAMES)}"
        profiles.append(
            ServiceProfile(
                name=name,
                host=f"host-{i % 8:02d}",
                cpu_base=rng.uniform(10, 50),
                cpu_amplitude=rng.uniform(5, 20),
                ram_total_gb=rng.choice((8, 16, 32, 64)),
                ram_used_base=rng.uniform(0.3, 0.7),
                disk_total_gb=rng.choice((256, 512, 1024, 4096)),
                disk_used_base=rng.uniform(0.2, 0.8),
                phase=rng.uniform(0, 2 * math.pi),
            )
        )
    return profiles


def _clamp(value: float, low: float, high: float) -> float:
    return max(low, min(high, value))


def steady(profile: ServiceProfile, elapsed_s: float, rng: random.Random) -> dict:
    """A healthy service: a slow (hourly) wave plus noise around its base load; no ``ts``."""
    wave = math.sin(2 * math.pi * elapsed_s / 3600.0 + profile.phase)
    cpu = _clamp(profile.cpu_base + profile.cpu_amplitude * wave + rng.gauss(0, 3), 0, 100)
    ram_used = _clamp(profile.ram_used_base + 0.05 * wave + rng.gauss(0, 0.01), 0, 1)
    disk_used = _clamp(profile.disk_used_base + rng.gauss(0, 0.001), 0, 1)
    return {
        "service": profile.name,
        "host": profile.host,
        "cpu_pct": round(cpu, 3),
        "ram_total_gb": profile.ram_total_gb,
        "ram_free_gb": round(profile.ram_total_gb * (1 - ram_used), 4),
        "disk_total_gb": profile.disk_total_gb,
        "disk_free_gb": round(profile.disk_total_gb * (1 - disk_used), 4),
    }


# Health behaviour of each scenario; a scenario about drives keeps the services steady.
SCENARIOS = {"steady": steady, "degrading_drive": steady}
