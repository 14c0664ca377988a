"""Hand closed landing segments to the landing store without stalling the receiver.

The collector's receive loop closes segments and puts them on a queue; one
``Publisher`` thread publishes them, in order, with ``LandingStore.publish``
(hidden name, then rename).

When the store is unreachable or refuses a write (an HDFS outage), the
segment goes to the local **spool** (``<data_dir>/spool/<collector>/``), and
so does every segment after it while the spool is not empty, so order is
kept.  The thread retries the oldest spooled segment with backoff (0.1 s
doubling to ``max_backoff_s``) and ships the spool in order once the store is
back; a shipped segment's spool file is then removed.  The spool is on disk
(written whole, fsync'ed, renamed), so memory stays small during a long
outage and a collector that stops, or crashes, with a full spool ships it at
its next start.

Nothing is shipped twice: segment names are unique, and a store's
``publish`` of a path that already exists is a no-op, so a crash between a
publish and the removal of its spool file only repeats a no-op.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

from healthmon.landing import LandingStore, LocalLandingStore

log = logging.getLogger("healthmon.ingest.publisher")

_STOP = object()


@dataclass
class Segment:
    """A closed segment: its path in the landing store, its bytes, what it holds."""

    path: str
    data: bytes | bytearray  # the receive loop's buffer itself (handed over, never touched again): no copy of ~8 MB
    lines: int
    kind: str  # "raw" | "deadletter"


class Spool:
    """Segments waiting on local disk, oldest first (by segment name, which counts up)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        for leftover in self.directory.glob(".*.tmp"):
            leftover.unlink(missing_ok=True)  # a write that a crash interrupted: its segment is still pending upstream
        self._files = sorted(p for p in self.directory.iterdir() if p.suffix == ".segment")

    def __len__(self) -> int:
        return len(self._files)

    def put(self, seg: Segment) -> None:
        name = seg.path.rsplit("/", 1)[-1].removesuffix(".jsonl")
        final = self.directory / f"{name}.segment"
        tmp = self.directory / f".{name}.tmp"
        header = orjson.dumps({"path": seg.path, "lines": seg.lines, "kind": seg.kind})
        with open(tmp, "wb") as fh:
            fh.write(header + b"\n" + seg.data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        self._files.append(final)

    def oldest(self) -> tuple[Path, Segment] | None:
        if not self._files:
            return None
        path = self._files[0]
        header, _, data = path.read_bytes().partition(b"\n")
        meta = orjson.loads(header)
        return path, Segment(meta["path"], data, meta["lines"], meta["kind"])

    def remove(self, path: Path) -> None:
        path.unlink(missing_ok=True)
        self._files.remove(path)

    def lines(self) -> int:
        total = 0
        for path in self._files:
            with open(path, "rb") as fh:
                total += orjson.loads(fh.readline())["lines"]
        return total


class Publisher(threading.Thread):
    """Publish segments in the order they were submitted; spool them while the store is away."""

    def __init__(self, store: LandingStore, spool: Spool, *, max_backoff_s: float = 5.0) -> None:
        super().__init__(name="landing-publisher", daemon=True)
        self.store = store
        # a local store writes the receive loop's bytearray as it is; other stores get bytes (the HDFS client sends
        # anything else as an iterable)
        self._as_given = isinstance(store, LocalLandingStore)
        self.spool = spool
        self.max_backoff_s = max_backoff_s
        self._queue: queue.Queue = queue.Queue()
        self._give_up = threading.Event()
        # Each counter has one writer: ``submitted`` the receive loop, the rest this thread.
        self.submitted = len(spool)  # a spool left by an earlier run ships first
        self.done = 0
        self.landed_segments = 0
        self.landed_messages = 0
        self.deadletter_segments = 0
        self.deadletter_messages = 0
        self.spooled_segments = 0
        self.shipped_segments = 0
        self.publish_errors = 0
        self.last_error = ""
        self._delay = 0.1
        self._retry_at = 0.0

    @property
    def pending(self) -> int:
        """Segments handed over (or left in the spool) and not yet in the store."""
        return self.submitted - self.done

    def submit(self, segment: Segment) -> None:
        self.submitted += 1
        self._queue.put(segment)

    def close(self) -> None:
        """Ask the thread to publish what it was given and stop (join it to wait)."""
        self._queue.put(_STOP)

    def give_up(self) -> None:
        """Stop retrying the store: what is not published stays in the spool for the next start."""
        self._give_up.set()
        self._queue.put(None)  # wake the thread

    def run(self) -> None:
        stopping = False
        while True:
            timeout = None if not len(self.spool) else max(0.0, self._retry_at - time.monotonic())
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                item = None
            if item is _STOP:
                stopping = True
            elif isinstance(item, Segment):
                self._accept(item)
            if len(self.spool) and time.monotonic() >= self._retry_at and not self._give_up.is_set():
                self._ship_spool()
            if self._give_up.is_set() and self._queue.empty():
                return
            if stopping and not len(self.spool) and self._queue.empty():
                return

    def _accept(self, seg: Segment) -> None:
        if len(self.spool) or self._give_up.is_set():
            self._to_spool(seg)  # keep the order: older segments are waiting in the spool
        elif not self._publish(seg):
            self._to_spool(seg)

    def _to_spool(self, seg: Segment) -> None:
        self.spool.put(seg)
        self.spooled_segments += 1

    def _publish(self, seg: Segment) -> bool:
        try:
            self.store.publish(seg.path, seg.data if self._as_given else bytes(seg.data))
        except Exception as exc:  # noqa: BLE001 - any store failure: spool the segment, retry later
            self.publish_errors += 1
            self.last_error = f"{type(exc).__name__}: {exc}"[:300]
            log.warning("publish %s failed (%d pending): %s; spooling, retry in %.1fs",
                        seg.path, self.pending, self.last_error, self._delay)
            self._retry_at = time.monotonic() + self._delay
            self._delay = min(self._delay * 2, self.max_backoff_s)
            return False
        self._delay = 0.1
        if seg.kind == "raw":
            self.landed_segments += 1
            self.landed_messages += seg.lines
        else:
            self.deadletter_segments += 1
            self.deadletter_messages += seg.lines
        self.done += 1
        return True

    def _ship_spool(self) -> None:
        while (oldest := self.spool.oldest()) is not None:
            path, seg = oldest
            if not self._publish(seg):
                return
            self.spool.remove(path)
            self.shipped_segments += 1
            if not len(self.spool):
                log.info("spool shipped: the landing store took every spooled segment")
