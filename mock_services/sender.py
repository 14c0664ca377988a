"""``healthmon mock``: simulated services sending health datagrams over UDP.

``--services N`` services each send ``--rate R`` messages per second (so N*R
datagrams/s in all) for ``--duration D`` seconds (0: until stopped), with
values derived from ``--seed``.  ``--format seed003`` sends the original
Health-Monitoring-System client's format instead of canonical JSON.

``--scenario`` names what the services do (``mock_services/scenarios.py``):
one scenario, a comma-separated list whose service scenarios are given to
the services round-robin (a name may repeat), or ``all``.  ``--time-scale X``
runs the scenario clock X times faster than the wall clock (a 40-minute
cycle takes 40/X minutes; rates, intervals and ``--duration`` stay in real
seconds).  ``--malformed-share`` is the share of broken datagrams of the
``malformed`` services (always canonical JSON based, whatever ``--format``).

``--drives N`` also simulates N NVMe drives (``mock_services/drives.py``):
every ``--drive-interval`` seconds, one ``disk_latency`` message per drive and
op (read, write), sent at the end of each interval (always canonical JSON).
With ``degrading_drive`` among the scenarios the last drive's latency tail
grows (on the scenario clock).
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

from healthmon.config import ConfigError, Settings
from healthmon.schema import encode, encode_seed003, sign
from healthmon.signing import add_sender_arguments, sender_key
from mock_services.drives import drive_messages, make_drives
from mock_services.scenarios import ALL, MALFORMED_SHARE, SCENARIOS, Malformed, datagram, make_profiles, parse_scenarios, stamped

log = logging.getLogger(__name__)

FORMATS = {"canonical": encode, "seed003": encode_seed003}
DRIVE_SCENARIO = "degrading_drive"  # the scenario about drives
MAX_TIME_SCALE = 3600.0  # --time-scale at most: an hour of scenario time per second


def scenario_list(spec: str) -> list[str]:
    """argparse type of ``--scenario``: the parsed list, or a usage error naming the bad scenario."""
    try:
        return parse_scenarios(spec)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--services", type=int, default=5, help="number of simulated services (0: drives only)")
    parser.add_argument("--rate", type=float, default=1.0, help="messages per second per service")
    parser.add_argument("--duration", type=float, default=0.0, help="seconds to run; 0 runs until stopped")
    parser.add_argument("--seed", type=int, default=42, help="seed of every simulated value")
    parser.add_argument("--format", choices=sorted(FORMATS), default="canonical", help="wire format")
    parser.add_argument("--scenario", type=scenario_list, default="steady", metavar="NAME[,NAME...]",
                        help=f"behaviour of the services, given round-robin: {', '.join(SCENARIOS)}, or {ALL}")
    parser.add_argument("--time-scale", type=float, default=1.0, help="scenario clocks run this many times faster than real time")
    parser.add_argument("--malformed-share", type=float, default=MALFORMED_SHARE,
                        help="share of broken datagrams of the malformed services (0..1)")
    parser.add_argument("--target", default=None, help="host:port to send to (default: the collector's udp_host:udp_port)")
    parser.add_argument("--drives", type=int, default=0, help="number of simulated NVMe drives sending disk_latency (0: none)")
    parser.add_argument("--drive-interval", type=float, default=5.0, help="seconds per disk_latency interval of each drive")
    add_sender_arguments(parser)


def messages(services: int, seed: int, scenario: str, ticks: Iterator[tuple[float, float]]) -> Iterator[dict | Malformed]:
    """What the services send at each ``(elapsed_s, ts)`` tick (``scenario``: as ``--scenario``); depends only on seed and elapsed_s."""
    batch = health_batches(services, seed, parse_scenarios(scenario))
    for elapsed_s, ts in ticks:
        yield from batch(elapsed_s, ts)


def health_batches(services: int, seed: int, scenarios: list[str],
                   malformed_share: float = MALFORMED_SHARE) -> Callable[[float, float], list[dict | Malformed]]:
    """A function of ``(scenario elapsed_s, ts)`` giving what each service sends then (silent ones nothing).

    Call it tick after tick, in order: each service draws its noise from a
    generator of its own, so its values do not depend on the other services.
    """
    profiles = make_profiles(services, seed, scenarios, malformed_share)
    behaviours = [(SCENARIOS[profile.scenario], profile, random.Random(f"{seed}:{profile.name}")) for profile in profiles]

    def batch(elapsed_s: float, ts: float) -> list[dict | Malformed]:
        samples = (scenario(profile, elapsed_s, rng) for scenario, profile, rng in behaviours)
        return [stamped(sample, ts) for sample in samples if sample is not None]

    return batch


class Sender:
    """A UDP sender that never raises on the hot path (failures are counted); signs every datagram when given a key.

    The socket is connected: it is bound to the address that reaches the
    collector and the kernel hands it nothing from anyone else.
    """

    def __init__(self, host: str, port: int, key: tuple[str, bytes] | None = None) -> None:
        self.address = (host, port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.connect(self.address)
        self.key = key
        self.sent = 0
        self.errors = 0

    def send(self, datagram: bytes) -> None:
        if self.key is not None:
            datagram = sign(datagram, *self.key)
        try:
            self.sock.send(datagram)
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
    if not 0 < args.time_scale <= MAX_TIME_SCALE:
        log.error("--time-scale must be > 0 and <= %g", MAX_TIME_SCALE)
        return 2
    if not 0 <= args.malformed_share <= 1:
        log.error("--malformed-share must be between 0 and 1")
        return 2
    try:
        key = sender_key(args)
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    sender = Sender(host, port, key)
    encoder = FORMATS[args.format]
    scale = args.time_scale
    started = time.time()

    # Up to two schedules, each (elapsed time of its n-th tick, emit, whether that tick is still due): health at
    # n / rate (n >= 0) before `duration`; drives at the end of each interval, k * drive_interval (k >= 1), up to
    # `duration`.  The earliest due tick is sent next.
    schedules: list[tuple[Callable[[int], float], Callable[[float, float], None], Callable[[float], bool]]] = []
    if args.services:
        period = 1.0 / args.rate
        health = health_batches(args.services, args.seed, args.scenario, args.malformed_share)
        for profile in make_profiles(args.services, args.seed, args.scenario, args.malformed_share):
            log.info("mock: service %s on %s: %s", profile.name, profile.host, profile.scenario)

        def emit_health(elapsed_s: float, ts: float) -> None:
            for sample in health(elapsed_s * scale, ts):
                sender.send(datagram(sample, encoder))

        schedules.append((lambda n: n * period, emit_health, lambda t: args.duration <= 0 or t < args.duration))
    if args.drives:
        drives = make_drives(args.drives, args.seed, DRIVE_SCENARIO if DRIVE_SCENARIO in args.scenario else "steady")
        interval = args.drive_interval

        def emit_drives(elapsed_s: float, ts: float) -> None:
            for message in drive_messages(drives, args.seed, elapsed_s * scale, ts, interval):
                sender.send(encode(message))

        schedules.append((lambda k: (k + 1) * interval, emit_drives, lambda t: args.duration <= 0 or t <= args.duration + 1e-9))

    log.info("mock: %d services x %s msg/s, %d drives every %s s -> udp://%s:%d (%s, seed %d, %s, time x%g)", args.services,
             args.rate, args.drives, args.drive_interval, host, port, args.format, args.seed, ",".join(args.scenario), scale)
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
