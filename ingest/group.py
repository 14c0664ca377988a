"""Several receiver processes on one UDP port: ``collector_processes`` > 1 (0: one per core).

One Python process spends ~6-7 us of CPU per datagram, so one core caps it
near 150k msg/s and a busy core far lower.  With ``collector_processes=N``
``healthmon collect`` starts N receiver processes, each a whole collector of
its own (``ingest.collector``), whose sockets share the port through
``SO_REUSEPORT``; the kernel hands each datagram to one of them by a hash of
its source address and port, so the load spreads as well as the senders are
many (one sender socket always lands on the same receiver).

Receiver ``k`` is collector ``<collector_id>-<k>`` (``c1-0``, ``c1-1``, ...):
its own message ids, segment names, counters file
(``state/collector-c1-0.json``, so ``/api/v1/pipeline`` and ``/metrics`` show
each receiver), spool (``spool/c1-0/``) and dead letters.  With N = 1 nothing
of this exists: one process, no ``SO_REUSEPORT``, collector ``c1``, exactly
as before.

The parent only supervises.  Before it starts the receivers it binds the
port once without ``SO_REUSEPORT``: that fails when anything already holds
it, another group of receivers included (otherwise a second group would
quietly join the first one's sockets and take half its traffic).  SIGTERM or
SIGINT to the parent is passed to every receiver as SIGTERM (a second one as
a second SIGTERM: stop retrying an unreachable landing store); each receiver
publishes what it holds and stops as a single collector does, well within
10 s.  Receivers ignore SIGINT, so Ctrl-C in a terminal (which signals the
whole process group) still stops each of them once.  When a receiver exits
without being asked, the parent stops the others and exits non-zero, and
whatever runs ``healthmon collect`` (``healthmon up``, systemd, Docker)
decides about a restart; the receivers that stopped published what they held.
Should the parent itself be killed, each receiver gets SIGTERM from the
kernel (``PR_SET_PDEATHSIG``) and stops cleanly.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import signal
import socket
import sys

from healthmon.config import ConfigError, Settings
from healthmon.forked import ForkedGroup, become_worker
from ingest import guard

log = logging.getLogger("healthmon.ingest.group")



def receiver_processes(settings: Settings) -> int:
    """How many receiver processes ``collector_processes`` asks for (0: one per core this process may use)."""
    return settings.collector_processes or len(os.sched_getaffinity(0))


def receiver_ids(settings: Settings, processes: int) -> list[str]:
    """The collector ids of the receivers: ``<collector_id>`` alone, or ``<collector_id>-0`` ... ``-<N-1>``."""
    if processes == 1:
        return [settings.collector_id]
    return [f"{settings.collector_id}-{k}" for k in range(processes)]


def warn_about_other_spools(settings: Settings, processes: int) -> None:
    """Log the spools of this collector's other layouts that still hold segments: no receiver of this run ships them.

    They exist when ``collector_processes`` changed while the landing store was unreachable; run once more with the
    old value (or move the ``*.segment`` files into the spool of a running receiver) to ship them.
    """
    ours = set(receiver_ids(settings, processes))
    pattern = re.compile(rf"{re.escape(settings.collector_id)}(-\d+)?\Z")
    try:
        spools = [p for p in settings.spool_dir.iterdir() if p.is_dir() and pattern.match(p.name) and p.name not in ours]
    except FileNotFoundError:
        return
    for spool in sorted(spools):
        segments = sum(1 for _ in spool.glob("*.segment"))
        if segments:
            log.warning("spool %s holds %d segments of collector %s, which this run (collector_processes=%d) does not "
                        "start: they ship when it runs again", spool, segments, spool.name, settings.collector_processes)


def _claim_port(settings: Settings) -> int:
    """The port the receivers will share, after a plain bind showed that nobody holds it (0: a free one)."""
    family = socket.AF_INET6 if ":" in settings.udp_host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.bind((settings.udp_host, settings.udp_port))
        return probe.getsockname()[1]


def run_group(settings: Settings, processes: int) -> int:
    """Start ``processes`` receivers on the port, supervise them until a stop signal; 0 when all stopped cleanly."""
    try:
        guard.make_guards(settings)  # a bad keys file: one message, before any receiver starts
    except ConfigError as exc:
        log.error("bad setting: %s", exc)
        return 2
    try:
        port = _claim_port(settings)
    except OSError as exc:
        log.error("cannot listen on udp://%s:%d: %s", settings.udp_host, settings.udp_port, exc)
        return 1
    return _supervise(dataclasses.replace(settings, udp_port=port), processes)


def _supervise(settings: Settings, processes: int) -> int:
    ids = receiver_ids(settings, processes)
    group = ForkedGroup([(f"collector-{collector_id}", _receiver_main,
                          (dataclasses.replace(settings, collector_id=collector_id), os.getpid())) for collector_id in ids],
                        "receiver")

    def started(receivers) -> None:
        log.info("collector %s: %d receiver processes (%s, pids %s) share udp://%s:%d with SO_REUSEPORT", settings.collector_id,
                 len(receivers), ", ".join(ids), ", ".join(str(r.pid) for r in receivers), settings.udp_host, settings.udp_port)

    code = group.run(started)
    if code:
        log.error("collector %s stopped; receivers exited with %s", settings.collector_id, group.exit_codes)
    else:
        log.info("collector %s stopped: all %d receivers published what they held", settings.collector_id, len(ids))
    return code


def _receiver_main(settings: Settings, parent_pid: int) -> None:
    """One receiver process (forked by the parent): a whole collector on the shared port."""
    become_worker(parent_pid)
    make_record = logging.getLogRecordFactory()

    def tagged(*args, **kwargs) -> logging.LogRecord:  # every log line says which receiver wrote it
        record = make_record(*args, **kwargs)
        record.name = f"{record.name}[{settings.collector_id}]"
        return record

    logging.setLogRecordFactory(tagged)
    from ingest.collector import run_receiver

    sys.exit(run_receiver(settings, reuse_port=True, stop_signals=(signal.SIGTERM,)))
