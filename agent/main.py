"""``healthmon agent``: this host's health and block latency, sent over UDP every interval.

Every ```--interval`` seconds (default 5) the agent sends one ``health``
message for the host and one ``disk_latency`` message per block device and
op that completed I/O in the interval (aggregated here: never one datagram per
I/O).  The latency source is the first of BCC, libbpf (``biolatency``) and
``/proc/diskstats`` that works here (``--source`` forces one); the agent logs
which one it uses and why each other one was not usable.  SIGTERM or SIGINT
stop it after the current interval's send.

``--key-id ID --secret-file FILE`` signs every datagram (``healthmon.schema``'s
HMAC trailer) for a collector whose ``signing`` is ``optional`` or
``required``; the collector's ``signing_keys_file`` must hold the same secret
under that id.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
import time

from agent.health import HostHealth, clean_name, host_info_message, static_info
from agent.latency import LatencySource, MeanLatency, choose_source, make_sources
from healthmon.config import ConfigError, Settings
from healthmon.schema import encode
from healthmon.signing import sender_key
from healthmon.sketch import LatencySketch
from mock_services.sender import Sender

log = logging.getLogger("agent")

STATIC_INFO_EVERY_S = 3600.0


def latency_message(host: str, device: str, op: str, ts: float, interval_s: float, value: LatencySketch | MeanLatency,
                    source: str) -> dict | None:
    """One ``disk_latency`` message, or None when nothing completed."""
    if value.count <= 0:
        return None
    msg = {
        "type": "disk_latency",
        "host": clean_name(host),
        "device": clean_name(device),
        "op": op,
        "ts": ts,
        "interval_s": min(3600.0, max(interval_s, 1e-3)),
        "count": int(value.count),
        "source": source,
    }
    if isinstance(value, MeanLatency):
        # Only the mean is known; max_us carries the mean, a lower bound of the real maximum.
        msg.update(sum_us=float(value.sum_us), max_us=value.mean_us, buckets=[], mean_only=True)
    else:
        msg.update(sum_us=float(value.sum_us), max_us=min(float(value.max_us), float(value.sum_us)), buckets=value.to_pairs())
    return msg


def parse_target(target: str | None, settings: Settings) -> tuple[str, int]:
    if not target:
        return settings.udp_host, settings.udp_port
    host, _, port = target.rpartition(":")
    return host or "127.0.0.1", int(port)


class Agent:
    """The loop's state: one health sampler, one latency source, one sender."""

    def __init__(self, sender: Sender, source: LatencySource | None, health: HostHealth | None = None,
                 key: tuple[str, bytes] | None = None) -> None:
        self.sender = sender
        self.key_id, self.secret = key if key is not None else (None, None)
        self.source = source
        self.health = health or HostHealth()
        self.last_ts = time.time()
        self.errors_logged: set[str] = set()
        self.messages = 0

    def tick(self) -> list[dict]:
        """Measure the interval that ends now and send its messages; never raises."""
        ts = time.time()
        interval_s, self.last_ts = ts - self.last_ts, ts
        out: list[dict] = []
        try:
            out.append(self.health.sample(ts))
        except Exception as exc:  # psutil trouble must not stop latency reporting
            self._once(f"host health failed: {exc}")
        if self.source is not None:
            try:
                values = self.source.collect()
            except Exception as exc:
                self._once(f"{self.source.name}: collect failed: {exc}")
                values = {}
            for (device, op), value in sorted(values.items()):
                msg = latency_message(self.health.host, device, op, ts, interval_s, value, self.source.name)
                if msg is not None:
                    out.append(msg)
        for msg in out:
            self.send(msg)
        self.messages += len(out)
        return out

    def send(self, msg: dict) -> None:
        """One message on the wire, signed when the agent has a key."""
        self.sender.send(encode(msg, self.key_id, self.secret))

    def _once(self, text: str) -> None:
        if text not in self.errors_logged:
            self.errors_logged.add(text)
            log.warning("%s (said once)", text)


def run(settings: Settings, args: argparse.Namespace) -> int:
    if args.interval < 0.1 or args.interval > 3600:
        log.error("--interval must be between 0.1 and 3600 s")
        return 2
    host, port = parse_target(args.target, settings)
    try:
        key = sender_key(args)
    except ConfigError as exc:
        log.error("agent: %s", exc)
        return 2
    devices = {d.strip() for d in args.devices.split(",") if d.strip()} if args.devices else None
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    info = static_info()
    log.info("agent: host info %s", info)
    health = HostHealth()
    sources = make_sources(args.source, devices, work_dir=os.path.join(os.path.abspath(settings.data_dir), "bcc"))
    source, reasons = choose_source(sources)
    for name, reason in reasons.items():
        log.info("agent: latency source %s: %s", name, reason)
    if source is None:
        if args.source != "auto":
            log.error("agent: latency source %s cannot run here (see above)", args.source)
            return 2
        log.warning("agent: no block latency source works here: sending host health only")
    else:
        accuracy = {"bcc": "exact sketch buckets (2%)", "libbpf": "log2 buckets: latencies within a factor of sqrt(2)",
                    "diskstats": "mean latency only (mean_only=true)"}[source.name]
        log.info("agent: using latency source %s (%s)", source.name, accuracy)
    log.info("agent: sending every %.3g s to udp://%s:%d%s%s", args.interval, host, port,
             f" (devices {','.join(sorted(devices))})" if devices else "", f", signed with key {key[0]!r}" if key else ", unsigned")

    sender = Sender(host, port)
    try:
        # Connected, the socket takes datagrams from the collector's address only (and is bound to loopback when the
        # target is): an unconnected UDP socket is bound to every address and takes datagrams from anyone.
        sender.sock.connect(sender.address)
    except OSError as exc:
        log.warning("agent: cannot connect the UDP socket to %s:%d (%s): sending unconnected", host, port, exc)
    agent = Agent(sender, source, health, key)
    agent.send(host_info_message(info, time.time()))
    next_info = time.monotonic() + STATIC_INFO_EVERY_S
    next_tick = time.monotonic() + args.interval
    try:
        while not stop.wait(max(0.0, next_tick - time.monotonic())):
            next_tick += args.interval
            if next_tick < time.monotonic():  # fell behind (suspend, overload): do not burst
                next_tick = time.monotonic() + args.interval
            agent.tick()
            if time.monotonic() >= next_info:
                next_info += STATIC_INFO_EVERY_S
                info = static_info()
                log.info("agent: host info %s", info)
                agent.send(host_info_message(info, time.time()))
    finally:
        if source is not None:
            source.stop()
        log.info("agent: stopped; sent %d messages (%d send errors)", sender.sent, sender.errors)
    return 0
