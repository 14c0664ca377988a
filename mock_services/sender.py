"""``healthmon mock``: simulated services sending health datagrams over UDP.

``--services N`` services each send ``--rate R`` messages per second (so N*R
datagrams/s in all) for ``--duration D`` seconds (0: until stopped), with
values derived from ``--seed``.  ``--format seed003`` sends the original
Health-Monitoring-System client's format instead of canonical JSON.
"""

from __future__ import annotations

import argparse
import logging
import random
import signal
import socket
import threading
import time
from collections.abc import Iterator

from healthmon.config import Settings
from healthmon.schema import encode, encode_seed003
from mock_services.scenarios import SCENARIOS, make_profiles

log = logging.getLogger(__name__)

FORMATS = {"canonical": encode, "seed003": encode_seed003}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--services", type=int, default=5, help="number of simulated services")
    parser.add_argument("--rate", type=float, default=1.0, help="messages per second per service")
    parser.add_argument("--duration", type=float, default=0.0, help="seconds to run; 0 runs until stopped")
    parser.add_argument("--seed", type=int, default=42, help="seed of every simulated value")
    parser.add_argument("--format", choices=sorted(FORMATS), default="canonical", help="wire format")
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="steady", help="behaviour of the services")
    parser.add_argument("--target", default=None, help="host:port to send to (default: the collector's udp_host:udp_port)")


def messages(services: int, seed: int, scenario: str, ticks: Iterator[tuple[float, float]]) -> Iterator[dict]:
    """One message per service for each ``(elapsed_s, ts)`` tick; values depend only on seed and elapsed_s."""
    profiles = make_profiles(services, seed)
    rng = random.Random(seed)
    sample = SCENARIOS[scenario]
    for elapsed_s, ts in ticks:
        for profile in profiles:
            yield {**sample(profile, elapsed_s, rng), "ts": ts}


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
    if args.services < 1 or args.rate <= 0:
        log.error("--services must be >= 1 and --rate > 0")
        return 2
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    sender = Sender(host, port)
    encoder = FORMATS[args.format]
    period = 1.0 / args.rate
    started = time.time()

    def ticks() -> Iterator[tuple[float, float]]:
        n = 0
        while not stop.is_set() and (args.duration <= 0 or n * period < args.duration):
            delay = started + n * period - time.time()
            if delay > 0 and stop.wait(delay):
                return
            yield n * period, time.time()
            n += 1

    log.info("mock: %d services x %s msg/s -> udp://%s:%d (%s, seed %d)", args.services, args.rate, host, port, args.format, args.seed)
    for message in messages(args.services, args.seed, args.scenario, ticks()):
        sender.send(encoder(message))
    log.info("mock: sent %d datagrams (%d send errors)", sender.sent, sender.errors)
    return 0
