"""``healthmon mock``: simulated services sending health datagrams over UDP.

``--services N`` services each send ``--rate R`` messages per second (so N*R
datagrams/s in all) for ``--duration D`` seconds (0: until stopped), with
values derived from ``--seed``.  ``--format seed003`` sends the original
Health-Monitoring-System client's format instead of canonical JSON.

``--drives N`` also simulates N NVMe drives (``mock_services/drives.py``):
every ``--drive-interval`` seconds, one ``disk_latency`` message per drive and
op (read, write), sent at the end of each interval (always canonical JSON).
With ``--scenario degrading_drive`` the last drive's latency tail grows.
"""

from __future__ import annotations

import argparse
import logging
import random
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator

from healthmon.config import Settings
from healthmon.schema import encode, encode_seed003
from mock_services.drives import drive_messages, make_drives
from mock_services.scenarios import SCENARIOS, make_profiles

log = logging.getLogger(__name__)

FORMATS = {"canonical": encode, "seed003": encode_seed003}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--services", type=int, default=5, help="number of simulated services (0: drives only)")
    parser.add_argument("--rate", type=float, default=1.0, help="messages per second per service")
    parser.add_argument("--duration", type=float, default=0.0, help="seconds to run; 0 runs until stopped")
    parser.add_argument("--seed", type=int, default=42, help="seed of every simulated value")
    parser.add_argument("--format", choices=sorted(FORMATS), default="canonical", help="wire format")
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="steady", help="behaviour of the services")
    parser.add_argument("--target", default=None, help="host:port to send to (default: the collector's udp_host:udp_port)")
    parser.add_argument("--drives", type=int, default=0, help="number of simulated NVMe drives sending disk_latency (0: none)")
    parser.add_argument("--drive-interval", type=float, default=5.0, help="seconds per disk_latency interval of each drive")


def messages(services: int, seed: int, scenario: str, ticks: Iterator[tuple[float, float]]) -> Iterator[dict]:
    """One message per service for each ``(elapsed_s, ts)`` tick; values depend only on seed and elapsed_s."""
    batch = health_batches(services, seed, scenario)
    for elapsed_s, ts in ticks:
        yield from batch(elapsed_s, ts)


def health_batches(services: int, seed: int, scenario: str) -> Callable[[float, float], list[dict]]:
    """A function of ``(elapsed_s, ts)`` giving one health message per service; call it tick after tick, in order."""
    profiles = make_profiles(services, seed)
    rng = random.Random(seed)
    sample = SCENARIOS[scenario]
    return lambda elapsed_s, ts: [{**sample(profile, elapsed_s, rng), "ts": ts} for profile in profiles]


class Sender:
    """A UDP sender that never raises on the hot path (failures are counted)."""

    def __init__(self, host: str, port: int) -> None:
        self.address = (host, port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sent = 0
        self.errors = 0

    def send(self, datagram: bytes) -> None:
        try:
            self.sock.sendto(datagram, self.address)
            self.sent += 1
        except OSError:
            self.errors += 1


def run(settings: Settings, args: argparse.Namespace) -> int:
    host, port = settings.udp_host, settings.udp_port
    if args.target:
        host, _, port_text = args.target.rpartition(":")
        port = int(port_text)
    if args.services < 0 or args.drives < 0 or args.services + args.drives < 1 or args.rate <= 0:
        log.error("--services and --drives must be >= 0 (one of them >= 1) and --rate > 0")
        return 2
    if args.drives and not 0 < args.drive_interval <= 3600:
        log.error("--drive-interval must be > 0 and <= 3600")
        return 2
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    sender = Sender(host, port)
    encoder = FORMATS[args.format]
    started = time.time()

    # Up to two schedules, each (elapsed time of its n-th tick, emit, whether that tick is still due): health at
    # n / rate (n >= 0) before `duration`; drives at the end of each interval, k * drive_interval (k >= 1), up to
    # `duration`.  The earliest due tick is sent next.
    schedules: list[tuple[Callable[[int], float], Callable[[float, float], None], Callable[[float], bool]]] = []
    if args.services:
        period = 1.0 / args.rate
        health = health_batches(args.services, args.seed, args.scenario)

        def emit_health(elapsed_s: float, ts: float) -> None:
            for message in health(elapsed_s, ts):
                sender.send(encoder(message))

        schedules.append((lambda n: n * period, emit_health, lambda t: args.duration <= 0 or t < args.duration))
    if args.drives:
        drives = make_drives(args.drives, args.seed, args.scenario)
        interval = args.drive_interval

        def emit_drives(elapsed_s: float, ts: float) -> None:
            for message in drive_messages(drives, args.seed, elapsed_s, ts, interval):
                sender.send(encode(message))

        schedules.append((lambda k: (k + 1) * interval, emit_drives, lambda t: args.duration <= 0 or t <= args.duration + 1e-9))

    log.info("mock: %d services x %s msg/s, %d drives every %s s -> udp://%s:%d (%s, seed %d, %s)", args.services, args.rate,
             args.drives, args.drive_interval, host, port, args.format, args.seed, args.scenario)
    counts = [0] * len(schedules)
    while not stop.is_set():
        due = [(when(counts[i]), i) for i, (when, _, keep) in enumerate(schedules) if keep(when(counts[i]))]
        if not due:
            break
        elapsed_s, i = min(due)
        delay = started + elapsed_s - time.time()
        if delay > 0 and stop.wait(delay):
            break
        schedules[i][1](elapsed_s, time.time())
        counts[i] += 1
    log.info("mock: sent %d datagrams (%d send errors)", sender.sent, sender.errors)
    return 0
