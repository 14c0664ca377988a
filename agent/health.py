"""The host's own health, from psutil, as ``health`` messages; static host info for the log.

Choices (DESIGN.md is silent):
- the service name is ``host:<hostname>`` (characters outside ``[A-Za-z0-9._:-]``
  become ``-``), ``host`` is the same sanitized hostname;
- ``ram_free_gb`` is psutil's *available* memory (what new work can use, page
  cache included), not the kernel's bare ``MemFree``;
- the disk is the file system of ``/``;
- GB are 10^9 bytes; ``net`` rates are bits per second, from the byte counter
  deltas of each interface since the previous message (the first message has none).
"""

from __future__ import annotations

import os
import platform
import re
import socket
import time

import psutil

GB = 1e9
_BAD_NAME_CHARS = re.compile(r"[^A-Za-z0-9._:-]")
_IFACE_BAD = re.compile(r"[^A-Za-z0-9._:@-]")


def clean_name(name: str, limit: int = 128) -> str:
    """A name the schema accepts: [A-Za-z0-9._:-]{1,limit}."""
    return (_BAD_NAME_CHARS.sub("-", name) or "unknown")[:limit]


def hostname() -> str:
    return clean_name(socket.gethostname(), 123)


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def static_info() -> dict:
    """What does not change while the agent runs: logged and sent (``host_info``) at start and every hour."""
    return {
        "hostname": socket.gethostname(),
        "cpu_count": psutil.cpu_count(logical=True),
        "cpu_cores": psutil.cpu_count(logical=False),
        "cpu_model": cpu_model(),
        "ram_total_gb": round(psutil.virtual_memory().total / GB, 3),
        "kernel": platform.release(),
        "os": platform.platform(),
    }


def net_rates(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]], dt: float) -> dict[str, dict[str, float]]:
    """Per interface {rx_bps, tx_bps} (bits/s) from (bytes_recv, bytes_sent) counters ``dt`` seconds apart."""
    out: dict[str, dict[str, float]] = {}
    if dt <= 0:
        return out
    for iface, (rx, tx) in after.items():
        prev = before.get(iface)
        if prev is None:
            continue
        drx, dtx = rx - prev[0], tx - prev[1]
        if drx < 0 or dtx < 0:  # counters reset (interface re-created)
            continue
        out[_IFACE_BAD.sub("-", iface)[:64]] = {"rx_bps": drx * 8 / dt, "tx_bps": dtx * 8 / dt}
    return out


def health_message(host: str, ts: float, cpu_pct: float, ram_total: int, ram_free: int, disk_total: int, disk_free: int,
                   net: dict[str, dict[str, float]] | None = None) -> dict:
    """A canonical ``health`` message of this host (capacities in bytes in, GB out)."""
    host = clean_name(host, 123)
    msg = {
        "type": "health",
        "service": clean_name(f"host:{host}"),
        "host": host,
        "ts": ts,
        "cpu_pct": min(100.0, max(0.0, float(cpu_pct))),
        "ram_total_gb": ram_total / GB,
        "ram_free_gb": min(ram_free, ram_total) / GB,
        "disk_total_gb": disk_total / GB,
        "disk_free_gb": min(disk_free, disk_total) / GB,
    }
    if net:
        msg["net"] = net
    return msg


class HostHealth:
    """Samples psutil; ``sample()`` returns one health message (CPU and net since the previous call)."""

    def __init__(self, host: str | None = None, disk_path: str = "/") -> None:
        self.host = host or hostname()
        self.disk_path = disk_path if os.path.exists(disk_path) else os.getcwd()
        psutil.cpu_percent(interval=None)  # primes the CPU counters: the next call covers the time since now
        self.prev_net = self._net_counters()
        self.prev_t = time.monotonic()

    @staticmethod
    def _net_counters() -> dict[str, tuple[int, int]]:
        try:
            return {k: (v.bytes_recv, v.bytes_sent) for k, v in psutil.net_io_counters(pernic=True).items()}
        except OSError:
            return {}

    def sample(self, ts: float | None = None) -> dict:
        now = time.monotonic()
        counters = self._net_counters()
        net = net_rates(self.prev_net, counters, now - self.prev_t)
        self.prev_net, self.prev_t = counters, now
        mem = psutil.virtual_memory()
        disk = psutil.disk_usage(self.disk_path)
        return health_message(self.host, time.time() if ts is None else ts, psutil.cpu_percent(interval=None),
                              mem.total, mem.available, disk.total, disk.free, net)


def host_info_message(info: dict, ts: float) -> dict:
    """The ``host_info`` message of ``static_info()``."""
    return {
        "type": "host_info", "host": clean_name(info["hostname"]), "ts": ts, "cpu_count": info["cpu_count"],
        "cpu_cores": info["cpu_cores"], "cpu_model": info["cpu_model"][:256], "ram_total_gb": info["ram_total_gb"],
        "kernel": info["kernel"][:256], "os": info["os"][:256],
    }
