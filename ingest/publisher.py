"""Hand closed landing segments to the landing store without stalling the receiver.

The collector's receive loop closes segments and puts them on a queue; one
``Publisher`` thread publishes them in order with ``LandingStore.publish``
(hidden name, then rename).  A segment whose publish fails is kept and retried
with exponential backoff (0.1 s doubling to ``max_backoff_s``): nothing
accepted is dropped while the process runs.  Order is kept, so a segment
that cannot be published holds back the ones behind it (they wait in memory).
``pending`` counts segments handed over but not yet published.

Extension point for the spool (DESIGN.md: "when the landing store is
unreachable the collector spools locally"): ``on_failure(segment, exc,
attempt)`` is called after every failed attempt.  A spool can write the
segment to local disk there and return True to mark it handled (it is then
counted as ``spooled`` and not retried here); returning False (the default)
keeps retrying against the store.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

from healthmon.landing import LandingStore

log = logging.getLogger("healthmon.ingest.publisher")

_STOP = object()


@dataclass
class Segment:
    """A closed segment: its path in the landing store, its bytes, what it holds."""

    path: str
    data: bytes
    lines: int
    kind: str  # "raw" | "deadletter"


class Publisher(threading.Thread):
    """Publish segments in the order they were submitted, retrying failures forever."""

    def __init__(
        self,
        store: LandingStore,
        *,
        max_backoff_s: float = 5.0,
        on_failure: Callable[[Segment, BaseException, int], bool] | None = None,
    ) -> None:
        super().__init__(name="landing-publisher", daemon=True)
        self.store = store
        self.max_backoff_s = max_backoff_s
        self.on_failure = on_failure
        self._queue: queue.Queue = queue.Queue()
        self._abort = threading.Event()
        # Each counter has one writer: ``submitted`` the receive loop, the rest this thread.
        self.submitted = 0
        self.done = 0
        self.landed_segments = 0
        self.landed_messages = 0
        self.deadletter_segments = 0
        self.deadletter_messages = 0
        self.spooled_segments = 0
        self.publish_errors = 0
        self.last_error = ""
        self.unpublished: list[Segment] = []  # filled only when aborted

    @property
    def pending(self) -> int:
        """Segments handed over and not yet published."""
        return self.submitted - self.done

    def submit(self, segment: Segment) -> None:
        self.submitted += 1
        self._queue.put(segment)

    def close(self, timeout: float | None = None) -> bool:
        """Publish everything submitted so far, then stop; True when nothing is left."""
        self._queue.put(_STOP)
        self.join(timeout)
        return not self.is_alive() and self.pending == 0

    def abort(self) -> None:
        """Stop retrying: segments not yet published stay in ``unpublished``."""
        self._abort.set()

    def run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if self._abort.is_set():
                self.unpublished.append(item)
                continue
            if not self._publish(item):
                self.unpublished.append(item)

    def _publish(self, seg: Segment) -> bool:
        delay = 0.1
        attempt = 0
        while True:
            attempt += 1
            try:
                self.store.publish(seg.path, seg.data)
            except Exception as exc:  # noqa: BLE001 - any store failure: keep the segment, retry
                self.publish_errors += 1
                self.last_error = f"{type(exc).__name__}: {exc}"[:300]
                log.warning("publish %s failed (attempt %d, %d pending): %s; retry in %.1fs",
                            seg.path, attempt, self.pending, self.last_error, delay)
                if self.on_failure is not None and self.on_failure(seg, exc, attempt):
                    self.spooled_segments += 1
                    self.done += 1
                    return True
                if self._abort.wait(delay):
                    return False
                delay = min(delay * 2, self.max_backoff_s)
                continue
            if seg.kind == "raw":
                self.landed_segments += 1
                self.landed_messages += seg.lines
            else:
                self.deadletter_segments += 1
                self.deadletter_messages += seg.lines
            self.done += 1
            if attempt > 1:
                log.info("published %s after %d attempts", seg.path, attempt)
            return True

