"""Answers prepared for newly published view files before any request reads them.

Every ``speed_trigger_s`` (0.5 s) the speed layer publishes a new real-time
view file, and every cached part of an answer that reads it (the real-time
facts, a summary's real-time part and rendered list, the real-time part of
every service's series per step: ``serving.queries.BatchCache``) has to be
computed again.  Computed by the first requests after the publication, every
request that needed them waited (the tail of the query benchmark).  So the
API server follows the files instead (``healthmon.views.ViewReader.follow``):
one thread per server process attaches a new pair on the spare DuckDB
instance, computes for it the parts that the requests of the last
``WARM_KEEP_S`` seconds asked for (``Demand.prepare``; newest first, for at
most ``WARM_BUDGET_S``), and only then makes it the pair requests read.
Requests do not wait for a publication; an answer may be as old as one
attach and preparation (tens of ms on an idle server, at most about
``WARM_BUDGET_S`` more on a busy one, whose requests then compute what was
left, as they all did before).

The parts are computed by the same functions, from the same files and keyed
by their identities as a request would compute them, so answers stay exact:
preparing only decides *when* an entry is computed, never its value.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable

from serving.queries import Snapshot

log = logging.getLogger("healthmon.serving")

WARM_KEEP_S = 10.0
"""An answer no request asked for this long is no longer prepared for new view files (a dashboard asks every 5 s)."""
WARM_BUDGET_S = 0.1
"""Preparing stops after this long (the answers asked for most recently first): the rest is left to the requests that need
it, so that a busy server does not hold back new files, which would add to freshness."""
WARM_MAX = 32
"""Most kinds of answer prepared for each new pair of view files (the most recently asked)."""


class Demand:
    """The kinds of answer that depend on the real-time view and that requests asked for lately, to prepare for new files.

    ``note(slot, replay, *args)``: a request asked for an answer that
    ``replay(snapshot, *args)`` computes; ``slot`` names its kind (one per
    endpoint, step and range length, so a rolling range keeps one slot with its
    newest arguments).  ``prepare(snapshot)`` replays the slots noted within
    ``WARM_KEEP_S`` against the new files, the newest first, until ``WARM_BUDGET_S``.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, budget_s: float = WARM_BUDGET_S) -> None:
        self.clock, self.budget_s = clock, budget_s
        self._slots: OrderedDict[Hashable, tuple[Callable[..., object], tuple, float]] = OrderedDict()
        self._lock = threading.Lock()

    def note(self, slot: Hashable, replay: Callable[..., object], *args) -> None:
        with self._lock:
            self._slots[slot] = (replay, args, self.clock())
            self._slots.move_to_end(slot)
            while len(self._slots) > WARM_MAX:
                self._slots.popitem(last=False)

    def prepare(self, snap: Snapshot) -> int:
        """Compute the recently asked kinds of answer for ``snap``'s files (into the cache), newest first, for up to
        ``WARM_BUDGET_S``; how many."""
        started = self.clock()
        oldest = started - WARM_KEEP_S
        with self._lock:
            for slot in [s for s, (_, _, noted) in self._slots.items() if noted < oldest]:
                del self._slots[slot]
            replays = list(reversed(self._slots.values()))
        done = 0
        for replay, args, _ in replays:
            if self.clock() - started > self.budget_s:
                break
            try:
                replay(snap, *args)
            except Exception:  # e.g. a range this view no longer allows: the request gets the error itself
                log.debug("preparing %s%r failed", getattr(replay, "__name__", replay), args, exc_info=True)
            done += 1
        return done
