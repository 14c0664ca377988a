"""Simulated services and what they report: profiles plus named scenarios.

A scenario turns a service profile, the scenario clock (seconds since the
mock started, times ``--time-scale``) and the service's own random generator
into what the service sends at that moment: a health message (no ``ts``: the
sender stamps it), a ``Malformed`` message (sent broken, so that the
collector rejects it with a known reason) or ``None`` (nothing is sent).
Values depend only on the seed, the service, the scenario clock and the
order of calls, never on the wall clock, so the same seed, rate and time
scale give the same values run after run.

Every scenario but ``steady`` repeats every ``CYCLE_S`` (40 minutes) of
scenario time; the times below are minutes into each cycle.  Thresholds are
those of the bundled alert rules (``healthmon/alert_rules.yaml``).

- ``steady``: a slow hourly wave plus noise around the service's base load;
  never near a threshold (CPU at most ~80 %, RAM used below 80 %, disk free
  above 19 %).
- ``cpu_spike``: steady, but CPU at 97 % (always above 95 %) from 4 to 34.
- ``memory_leak``: RAM used is 50 % right after a (re)start, 88 % two minutes
  later (warm caches), then leaks 0.25 %/min: above 90 % from 10 until the
  restart at 40 (97.5 %).
- ``disk_fill``: disk used is 88 % after a clean-up and fills 0.25 %/min (a
  runaway log): free space below 10 % from 8 until the clean-up at 40 (2 %).
- ``silent``: steady values, but sends nothing from 4 to 34 (the service
  stops, then comes back).
- ``flapping``: CPU alternates every 5 minutes between ~97 % and ~85 %, so a
  CPU > 90 % rule goes pending and resolves again every 10 minutes without
  firing, as long as its ``for`` is well over 5 minutes of scenario time
  (the bundled 5 m at ``healthmon up --mock``'s time scale of 3).
- ``malformed``: steady values, but a share (``ServiceProfile.malformed_share``)
  of its datagrams are broken, each in one of the ways of ``MALFORMATIONS``,
  which the collector rejects, each with its own reason.
- ``degrading_drive``: about drives (``mock_services/drives.py``): the last
  simulated drive's latency tail grows; it takes no service.

Several scenarios run at once: services are given the service scenarios of
a list round-robin (``make_profiles``), and a service's name shows its
scenario (``auth-cpu-spike``), except for ``steady`` (``api-gateway``).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from healthmon.schema import encode

SERVICE_NAMES = (
    "api-gateway", "auth", "billing", "catalog", "checkout", "search", "inventory", "notifications",
    "payments", "recommendations", "shipping", "TV", "users", "reports", "media", "chat",
)

MINUTE = 60.0
CYCLE_S = 40 * MINUTE  # every scenario but steady repeats every 40 minutes of scenario time
SPIKE_S = (4 * MINUTE, 34 * MINUTE)  # cpu_spike: CPU at ~97 % within these seconds of each cycle
SPIKE_CPU = (97.0, 1.0, 95.5)  # cpu_spike: CPU mean, noise (sd) and floor while spiking, percent
LEAK_RAM_USED = ((0.0, 0.50), (2 * MINUTE, 0.88), (CYCLE_S, 0.975))  # memory_leak: RAM used fraction at these cycle times
FILL_DISK_USED = ((0.0, 0.88), (CYCLE_S, 0.98))  # disk_fill: disk used fraction at these cycle times
SILENT_S = (4 * MINUTE, 34 * MINUTE)  # silent: sends nothing within these seconds of each cycle
FLAP_HALF_S = 5 * MINUTE  # flapping: CPU stays high, then low, this long each
FLAP_CPU = ((97.0, 1.0, 93.0, 100.0), (85.0, 1.5, 80.0, 88.0))  # flapping: (mean, sd, low, high) of CPU when high, when low
MALFORMED_SHARE = 0.2  # malformed: default share of broken datagrams


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
    scenario: str = "steady"
    malformed_share: float = 0.0  # share of broken datagrams (the malformed scenario)


@dataclass(frozen=True)
class Malformed:
    """A health message that is sent broken: the collector must reject it with ``reason`` (a ``MALFORMATIONS`` key)."""

    message: dict
    reason: str


Sample = dict | Malformed | None
Scenario = Callable[[ServiceProfile, float, random.Random], Sample]


def scenario_name(name: str) -> str:
    """How a scenario shows in a service name: ``cpu_spike`` -> ``cpu-spike`` (names allow no ``_``)."""
    return name.replace("_", "-")


def make_profiles(count: int, seed: int, scenarios: Sequence[str] = ("steady",),
                  malformed_share: float = MALFORMED_SHARE) -> list[ServiceProfile]:
    """``count`` deterministic service profiles, given the service scenarios of ``scenarios`` round-robin.

    ``scenarios`` may repeat a name (``steady, steady, cpu_spike``: two steady
    services to one spiking); scenarios that take no service
    (``degrading_drive``) are skipped, and a list of only those gives steady
    services.
    """
    cycle = [name for name in scenarios if SCENARIOS[name] is not None] or ["steady"]
    rng = random.Random(seed)
    profiles = []
    for i in range(count):
        base = SERVICE_NAMES[i % len(SERVICE_NAMES)]
        name = base if i < len(SERVICE_NAMES) else f"{base}-{i // len(SERVICE_NAMES)}"
        scenario = cycle[i % len(cycle)]
        profiles.append(
            ServiceProfile(
                name=name if scenario == "steady" else f"{name}-{scenario_name(scenario)}",
                host=f"host-{i % 8:02d}",
                cpu_base=rng.uniform(10, 50),
                cpu_amplitude=rng.uniform(5, 20),
                ram_total_gb=rng.choice((8, 16, 32, 64)),
                ram_used_base=rng.uniform(0.3, 0.7),
                disk_total_gb=rng.choice((256, 512, 1024, 4096)),
                disk_used_base=rng.uniform(0.2, 0.8),
                phase=rng.uniform(0, 2 * math.pi),
                scenario=scenario,
                malformed_share=malformed_share if scenario == "malformed" else 0.0,
            )
        )
    return profiles


def _clamp(value: float, low: float, high: float) -> float:
    return max(low, min(high, value))


def _in_cycle(elapsed_s: float) -> float:
    return max(0.0, elapsed_s) % CYCLE_S


def _ramp(t: float, knots: tuple[tuple[float, float], ...]) -> float:
    """The piecewise-linear function through ``knots`` ((t, value), t increasing) at ``t``."""
    for (t0, v0), (t1, v1) in zip(knots, knots[1:], strict=False):
        if t <= t1:
            return v0 + (v1 - v0) * (t - t0) / (t1 - t0)
    return knots[-1][1]


def _with_ram_used(message: dict, used: float) -> dict:
    return {**message, "ram_free_gb": round(message["ram_total_gb"] * (1 - used), 4)}


def _with_disk_used(message: dict, used: float) -> dict:
    return {**message, "disk_free_gb": round(message["disk_total_gb"] * (1 - used), 4)}


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


def cpu_spike(profile: ServiceProfile, elapsed_s: float, rng: random.Random) -> dict:
    """Steady, but the CPU is saturated (above 95 %) during ``SPIKE_S`` of each cycle."""
    message = steady(profile, elapsed_s, rng)
    if SPIKE_S[0] <= _in_cycle(elapsed_s) < SPIKE_S[1]:
        mean, sd, floor = SPIKE_CPU
        message["cpu_pct"] = round(_clamp(rng.gauss(mean, sd), floor, 100.0), 3)
    return message


def memory_leak(profile: ServiceProfile, elapsed_s: float, rng: random.Random) -> dict:
    """Steady CPU and disk; RAM used follows ``LEAK_RAM_USED`` (warm-up, then a steady leak) and drops at each restart."""
    return _with_ram_used(steady(profile, elapsed_s, rng), _ramp(_in_cycle(elapsed_s), LEAK_RAM_USED))


def disk_fill(profile: ServiceProfile, elapsed_s: float, rng: random.Random) -> dict:
    """Steady CPU and RAM; disk used follows ``FILL_DISK_USED`` (fills steadily) and drops at each clean-up."""
    return _with_disk_used(steady(profile, elapsed_s, rng), _ramp(_in_cycle(elapsed_s), FILL_DISK_USED))


def silent(profile: ServiceProfile, elapsed_s: float, rng: random.Random) -> dict | None:
    """Steady values, but nothing at all during ``SILENT_S`` of each cycle."""
    if SILENT_S[0] <= _in_cycle(elapsed_s) < SILENT_S[1]:
        return None
    return steady(profile, elapsed_s, rng)


def flapping(profile: ServiceProfile, elapsed_s: float, rng: random.Random) -> dict:
    """Steady RAM and disk; CPU high (~97 %) and low (~85 %) in turns of ``FLAP_HALF_S``, starting high."""
    message = steady(profile, elapsed_s, rng)
    mean, sd, low, high = FLAP_CPU[int(max(0.0, elapsed_s) // FLAP_HALF_S) % 2]
    message["cpu_pct"] = round(_clamp(rng.gauss(mean, sd), low, high), 3)
    return message


def malformed(profile: ServiceProfile, elapsed_s: float, rng: random.Random) -> dict | Malformed:
    """Steady values; a ``profile.malformed_share`` of the messages are sent broken, each in a way chosen at random."""
    message = steady(profile, elapsed_s, rng)
    if rng.random() < profile.malformed_share:
        return Malformed(message, rng.choice(MALFORMED_REASONS))
    return message


def _drop(message: dict, name: str) -> dict:
    return {k: v for k, v in message.items() if k != name}


# How the malformed scenario breaks a message (with its ts): the collector's reject reason -> (what is wrong, the datagram).
MALFORMATIONS: dict[str, tuple[str, Callable[[dict], bytes]]] = {
    "not_json": ("the JSON cut off halfway", lambda m: encode(m)[: len(encode(m)) // 2]),
    "not_utf8": ("a 0xff byte (never UTF-8) in the service name", lambda m: encode(m).replace(b'"service":"', b'"service":"\xff', 1)),
    "not_object": ("the message inside a JSON array", lambda m: encode([m])),
    "unknown_type": ('"type": "heartbeat"', lambda m: encode({"type": "heartbeat", **m})),
    "missing_field": ("no cpu_pct", lambda m: encode(_drop(m, "cpu_pct"))),
    "wrong_type": ('cpu_pct as text: "97%"', lambda m: encode({**m, "cpu_pct": "97%"})),
    "out_of_range": ("cpu_pct 150", lambda m: encode({**m, "cpu_pct": 150.0})),
    "bad_name": ('a space in the service name ("<name> v2")', lambda m: encode({**m, "service": m["service"] + " v2"})),
    "bad_timestamp": ('ts "yesterday"', lambda m: encode({**m, "ts": "yesterday"})),
    "free_exceeds_total": ("ram_free_gb twice ram_total_gb", lambda m: encode({**m, "ram_free_gb": 2.0 * m["ram_total_gb"]})),
}
MALFORMED_REASONS = tuple(MALFORMATIONS)


# Each scenario's behaviour of a service; None: the scenario takes no service (it is about drives).
SCENARIOS: dict[str, Scenario | None] = {
    "steady": steady,
    "cpu_spike": cpu_spike,
    "memory_leak": memory_leak,
    "disk_fill": disk_fill,
    "silent": silent,
    "flapping": flapping,
    "malformed": malformed,
    "degrading_drive": None,
}
ALL = "all"  # in a scenario list: every scenario, once


def parse_scenarios(spec: str) -> list[str]:
    """``"steady,cpu_spike"`` -> ``["steady", "cpu_spike"]``; ``"all"`` is every scenario; ValueError naming a bad one."""
    names: list[str] = []
    for item in spec.split(","):
        name = item.strip()
        if name == ALL:
            names.extend(SCENARIOS)
        elif name in SCENARIOS:
            names.append(name)
        else:
            raise ValueError(f"unknown scenario {name!r} (known: {', '.join(SCENARIOS)}, or {ALL})")
    return names


def stamped(sample: dict | Malformed, ts: float) -> dict | Malformed:
    """The sample with its send time ``ts``."""
    if isinstance(sample, Malformed):
        return replace(sample, message={**sample.message, "ts": ts})
    return {**sample, "ts": ts}


def datagram(sample: dict | Malformed, encoder: Callable[[dict], bytes] = encode) -> bytes:
    """The bytes to send: ``encoder`` of a message, or the broken datagram of a ``Malformed`` one (canonical JSON based)."""
    if isinstance(sample, Malformed):
        return MALFORMATIONS[sample.reason][1](sample.message)
    return encoder(sample)
