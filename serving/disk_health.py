"""Is this drive getting worse?  Recent p99 against the drive's own past and against its peers.

For each (host, device, op):

- ``recent_p99``: p99 of the merged sketch over ``[now - disk_recent_s, now)``;
- ``baseline_p99``: p99 over the ``disk_baseline_s`` before that (the drive's own history);
- ``fleet_p99``: the median of the recent p99 of its *peers*: every other device with the same op,
  the same kind (from its name: ``nvme``, ``sd``, ``vd``... ``DEVICE_KINDS``: an NVMe is not
  judged against a disk of another class) and the same measuring ``source`` (a mock drive is no peer
  of a real one, a mean-only diskstats reading no peer of a traced one).

The degradation score is the larger of ``recent / baseline`` and
``recent / fleet`` (whichever exist).  ``degraded`` from
``disk_degraded_ratio``, ``warn`` from ``disk_warn_ratio``, else ``ok``; the
reason says which comparison decided, in words.  A device with neither a
baseline nor peers is ``ok`` with the reason "no baseline and no peers yet".

``drive_health(con, now, settings)`` reads the merged sketches and judges
them: it is the answer of ``GET /api/v1/disks/health`` and what the ``drive``
alert rules (``alerting.engine``) evaluate, so both always agree.
"""

from __future__ import annotations

import math
import statistics

import duckdb

from healthmon.config import Settings
from healthmon.sketch import quantile
from serving import queries
from serving.params import iso

Key = tuple[str, str, str]


def _ms(us: float) -> str:
    return f"{us / 1000:.2f} ms" if us >= 1000 else f"{us:.0f} µs"


DEVICE_KINDS = ("nvme", "mmcblk", "loop", "xvd", "nbd", "rbd", "sd", "vd", "hd", "dm", "md", "zd")
"""Linux block device name prefixes, longest-first where one starts another (``xvd`` before ``vd``)."""


def device_kind(device: str) -> str:
    """The class of a block device from its name (``nvme0n1`` -> ``nvme``, ``sdb3`` -> ``sd``); ``other`` for names not known."""
    return next((kind for kind in DEVICE_KINDS if device.startswith(kind)), "other")


def judge(recent: dict[Key, list[tuple[int, int]]], baseline: dict[Key, list[tuple[int, int]]], settings: Settings,
          sources: dict[tuple[str, str], str | None] | None = None) -> list[dict]:
    """One verdict per device and op seen in the recent period, sorted by host, device, op.

    ``sources``: the measuring source of each (host, device) (``None``: all alike).
    """
    sources = sources or {}
    recent_p99 = {key: quantile(pairs, 0.99) for key, pairs in recent.items()}
    recent_p99 = {key: p for key, p in recent_p99.items() if p is not None}

    def peer_group(key: Key) -> tuple:
        host, device, op = key
        return op, device_kind(device), sources.get((host, device))
    out = []
    for key in sorted(recent_p99):
        host, device, op = key
        p99 = recent_p99[key]
        base = quantile(baseline.get(key, []), 0.99)
        group = peer_group(key)
        peers = [p for other, p in recent_p99.items() if other != key and peer_group(other) == group]
        fleet = statistics.median(peers) if peers else None
        ratios = {}
        if base:
            ratios["baseline"] = p99 / base
        if fleet:
            ratios["fleet"] = p99 / fleet
        score = max(ratios.values()) if ratios else 0.0
        status = "degraded" if score >= settings.disk_degraded_ratio else "warn" if score >= settings.disk_warn_ratio else "ok"
        if not ratios:
            reason = "no baseline and no peers yet"
        else:
            words = []
            if "baseline" in ratios:
                words.append(f"{ratios['baseline']:.1f}x its own baseline ({_ms(base)})")
            if "fleet" in ratios:
                words.append(f"{ratios['fleet']:.1f}x the fleet median ({_ms(fleet)} over {len(peers)} peers)")
            reason = f"{op} p99 {_ms(p99)} is " + " and ".join(words)
        out.append({
            "host": host, "device": device, "op": op, "status": status, "score": round(score, 3), "reason": reason,
            "recent_p99_us": p99, "baseline_p99_us": base, "fleet_p99_us": fleet,
        })
    return out


def drive_health(con: duckdb.DuckDBPyConnection, now: float, settings: Settings) -> dict:
    """The verdict on every drive at ``now`` over the merged views: ``{"now", "recent_from", "baseline_from",
    "warn_ratio", "degraded_ratio", "devices": judge(...)}``; periods start on window boundaries."""
    horizon = queries.horizon(con)
    window = settings.window_s
    recent_lo = int((now - settings.disk_recent_s) // window * window)
    baseline_lo = int((recent_lo - settings.disk_baseline_s) // window * window)
    recent = queries.disk_sketches(con, recent_lo, math.ceil(now), horizon)
    baseline = queries.disk_sketches(con, baseline_lo, recent_lo, horizon)
    return {
        "now": iso(now), "recent_from": iso(recent_lo), "baseline_from": iso(baseline_lo),
        "warn_ratio": settings.disk_warn_ratio, "degraded_ratio": settings.disk_degraded_ratio,
        "devices": judge(recent, baseline, settings, {(d["host"], d["device"]): d["source"] for d in queries.disks(con, horizon)}),
    }
