"""Forked worker processes under one parent: the collector's receivers (``ingest.group``) and the API's servers (``serving.server``).

``ForkedGroup(workers).run()`` forks every worker, then only supervises:
SIGTERM or SIGINT to the parent is passed to every worker as SIGTERM (each
stops cleanly on its own); a worker that exits without being asked stops the
others, and the group's exit code is then 1, so whatever runs the parent
(``healthmon up``, systemd) sees the failure.  A worker calls
``become_worker(parent_pid)`` first: it ignores SIGINT (Ctrl-C signals the
whole process group; the parent passes it on once) and gets SIGTERM from the
kernel should the parent die (``PR_SET_PDEATHSIG``), rather than go on alone.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
from collections.abc import Callable

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # prctl(2) option: the signal this process gets when its parent dies
POLL_S = 0.2
"""How often the parent looks at its signal flags while it waits for its workers."""


class ForkedGroup:
    """The parent of forked workers: starts them, passes stop signals on, notices one that dies.

    ``workers``: (process name, target, args) of each; ``kind`` names them in log lines ("receiver", "API server").
    After ``run()``, ``processes`` are the workers and ``exit_codes`` their exit codes by name.
    """

    def __init__(self, workers: list[tuple[str, Callable, tuple]], kind: str) -> None:
        self.workers, self.kind = workers, kind
        self.signals = 0  # stop signals received (each is passed on to every worker)
        self.processes: list[multiprocessing.Process] = []
        self.exit_codes: dict[str, int | None] = {}

    def _on_signal(self, _signum, _frame) -> None:
        self.signals += 1

    def run(self, started: Callable[[list[multiprocessing.Process]], None] = lambda processes: None) -> int:
        """Fork the workers, call ``started(processes)``, supervise until all exited; 0 when all stopped cleanly when asked."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            return self._supervise(started)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _supervise(self, started: Callable[[list[multiprocessing.Process]], None]) -> int:
        # fork: the parent has no thread yet, and a forked worker starts in milliseconds with the state as it is
        context = multiprocessing.get_context("fork")
        # SIGTERM stays blocked across the fork: a worker gets one passed on early once its own handler is installed
        # (it unblocks SIGTERM then), not in the moment it would still run the parent's copied handler
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        try:
            for name, target, args in self.workers:
                process = context.Process(target=target, name=name, args=args)
                process.start()
                self.processes.append(process)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        started(self.processes)
        passed_on = 0
        failed = None
        while True:
            alive = [p for p in self.processes if p.exitcode is None]
            if not alive:
                break
            if failed is None and self.signals == 0:
                failed = next((p for p in self.processes if p.exitcode is not None), None)
                if failed is not None:
                    log.error("%s %s exited with %s without being asked to: stopping the others", self.kind, failed.name, failed.exitcode)
                    self.signals = 1
            if self.signals > passed_on:
                passed_on = self.signals
                for process in alive:
                    try:
                        os.kill(process.pid, signal.SIGTERM)
                    except ProcessLookupError:
                        pass
            multiprocessing.connection.wait([p.sentinel for p in alive], timeout=POLL_S)
        self.exit_codes = {p.name: p.exitcode for p in self.processes}
        return 1 if failed is not None or any(self.exit_codes.values()) else 0


def become_worker(parent_pid: int) -> None:
    """First thing in a forked worker: ignore SIGINT, take SIGTERM when the parent dies; exit 1 if it is already gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C signals the process group: the parent passes it on, once
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        sys.exit(1)
