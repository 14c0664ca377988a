"""The UDP collector: receive health datagrams, land them as immutable segments.

``run(settings)`` binds ``udp://<udp_host>:<udp_port>`` and loops:

- every datagram is counted as ``received``; one larger than
  ``max_datagram_bytes`` is rejected as ``oversized``, every other one goes
  through ``healthmon.schema.parse_message``;
- an accepted message becomes one landed line (``schema.landed_line``) with
  the id ``<collector_id>-<run_id>-<n>`` (``run_id``: start time in ms, ``n``
  from 0) and is appended to the in-memory segment of its raw partition
  (message type, UTC hour of its own ``ts``);
- a rejected datagram becomes one dead-letter line ``{"recv_ts", "source",
  "reason", "detail", "raw_b64"}`` (base64 of the exact bytes) in the segment
  of the dead-letter partition of its receive hour;
- all open segments are closed ``segment_max_seconds`` after the first line
  of the current set went in, or as soon as one reaches
  ``segment_max_bytes``.  Closed segments are named
  ``<collector_id>-<run_id>-<seq:06d>`` (one counter for raw and dead-letter
  segments) and handed to a publisher thread (``ingest.publisher``), which
  publishes them in order and, while the landing store is unreachable,
  spools them on local disk and ships them in order when it is back, so the
  receive loop never waits for the landing store.

Counters (``<data_dir>/state/collector-<id>.json``, every ``stats_interval_s``
and at exit): ``received``, ``accepted``, ``rejected``, ``rejected_by_reason``,
``landed_messages``/``landed_segments`` (published raw segments),
``deadletter_messages``/``deadletter_segments``, ``pending_segments`` (not
yet in the store), ``spooled_segments`` / ``shipped_segments`` (went through
the spool / shipped from it), ``spool_segments`` (in the spool now),
``publish_errors``, ``started_at``, ``updated_at`` and ``state``.
``accepted + rejected == received`` holds in every written snapshot.

Checks that settings turn on (``ingest.guard``): ``signing=optional|required``
checks datagram signatures and replays (``parse`` becomes
``Verifier.parse``); ``rate_limit_per_source > 0`` drops a source's datagrams
beyond its token bucket before anything else, counted under ``rate_limited``
and not dead-lettered (so ``deadletter_messages`` = ``rejected`` minus
``rate_limited``).  Their state is in the counters (``signing``,
``rate_limit``); with both off the loop does one ``is None`` test more.

Bad input never stops the collector.  Reasons are those of
``schema.REASONS``; should the parser itself fail on some datagram (a bug),
the datagram is dead-lettered with reason ``internal_error`` and the error is
logged, and the collector goes on.

SIGTERM / SIGINT: stop receiving (what the kernel already queued on the socket
is still read, for at most one second), close and publish every open segment,
wait for the publisher, write the final counters, exit 0.  If the landing
store is unreachable, the publisher keeps trying for ``STOP_GRACE_S`` (or
until a second signal), then leaves the rest in the spool, which the next
start ships first: nothing accepted is lost, and the process still stops in
a few seconds.

``healthmon collect`` runs it (``collector_processes`` > 1: that many receiver
processes, see ``ingest.group``); so does ``python -m ingest.collector``
(settings from ``HEALTHMON_*`` only).

Speed: the loop reads up to 64 datagrams per system call (``recvmmsg``,
``ingest.recvmmsg``) from a blocking socket with a receive timeout
(``SO_RCVTIMEO`` = 0.1 s, so the loop wakes to close segments on time when
nothing arrives); while datagrams flow it sleeps 4 ms whenever a batch
emptied the socket, so it wakes once per few hundred datagrams rather than
once per datagram (a wake-up costs tens of microseconds on a VM: with 1 ms
the collector spent ~13 us per datagram at 25-50k msg/s, ~8.5 with 4 ms).  A batch (of at least
``BATCH_PATH_MIN``) made only of plain canonical health messages, nearly all
of the traffic, takes ``ingest.batchpath`` (the whole batch checked and its
landed lines written by msgspec in a few C calls, ~0.65x the fast path's
CPU); any other batch goes datagram by datagram: plain canonical health
messages take ``ingest.fastpath`` (the same checks as
``schema.parse_message`` for that one shape, and the landed line built in the
same step); everything else goes through ``parse_message``, which also gives
every rejection its reason.  Both land byte for byte what ``parse_message``
and ``landed_line`` would.
Accepted lines are appended to one growing ``bytearray`` per open segment
(not kept as ~20,000 small objects, each in fresh memory), which is handed to
the publisher as it is when the segment closes (no copy of ~8 MB in the
receive loop; a local store writes it as it is).  Counters live in
local variables; nothing is logged per message.  Measured on the 2-core dev
VM (``bench/ingest.py``, capacity): ~7-8 us of CPU per datagram, system
time included, with the batch path (~11 us with the fast path alone, ~14.5
us with one ``recvfrom`` and ``parse_message`` per datagram).  Beyond what one core takes,
``collector_processes`` runs several receiver processes on the port
(``ingest.group``, ``SO_REUSEPORT``); ``bench/ingest.py`` measures both.
"""

from __future__ import annotations

import base64
import logging
import os
import signal
import socket
import struct
import sys
import threading
import time

import orjson

from healthmon import landing, schema
from healthmon.config import ConfigError, Settings, load_settings
from healthmon.state import write_state
from ingest import guard
from ingest.batchpath import HealthBatchPath
from ingest.fastpath import HealthFastPath
from ingest.publisher import Publisher, Segment, Spool
from ingest.recvmmsg import BATCH, BatchReceiver

log = logging.getLogger("healthmon.ingest.collector")

TICK_S = 0.1  # the loop wakes at least this often (segment deadlines, stats, stop)
COALESCE_S = 0.004  # while datagrams flow, let this much time's worth queue up between batches
STOP_DRAIN_S = 1.0  # after a stop signal, read what is still queued on the socket for at most this long
INTERNAL_ERROR = "internal_error"
STOP_GRACE_S = 5.0  # at stop, how long the publisher may keep trying an unreachable store before leaving the spool
RATE_LIMIT_LOG_S = 60.0  # how often the sources that were rate limited are logged
RATE_LIMITED = "rate_limited"
BATCH_PATH_MIN = 4  # smaller batches go datagram by datagram: below this the batch path's fixed cost is more than it saves


class Collector:
    """One collector run: a bound socket, open segment buffers, a publisher, counters."""

    def __init__(self, settings: Settings, store: landing.LandingStore | None = None, reuse_port: bool = False) -> None:
        self.settings = settings
        self.reuse_port = reuse_port
        # the optional checks first: a bad keys file stops the start (ConfigError) before anything is opened
        self.verifier, self.limiter = guard.make_guards(settings)
        # signing=required refuses unsigned datagrams, so the fast path (which knows nothing of signatures) is off;
        # with signing=optional it takes unsigned ones only (a signature trailer is not JSON: such a datagram falls
        # through to the verifier)
        self.fast_path = HealthFastPath(settings.max_clock_skew_s) if settings.signing != "required" else None
        # the same for a whole batch of canonical health datagrams at once; off when the rate limit must see each
        # datagram's source
        self.next_sweep = 0.0
        self.next_rate_log = time.time() + RATE_LIMIT_LOG_S
        self.store = store if store is not None else landing.landing_for(settings)
        self.started_at = time.time()
        self.run_id = int(self.started_at * 1000)
        self.name_prefix = f"{settings.collector_id}-{self.run_id}-"
        self.batch_path = (HealthBatchPath(settings.max_clock_skew_s, settings.max_datagram_bytes, self.name_prefix)
                           if self.fast_path is not None and self.limiter is None else None)
        self.publisher = Publisher(self.store, Spool(settings.spool_dir / settings.collector_id))
        self.sock: socket.socket | None = None
        self.listen_url = ""
        self.rcvbuf_granted = 0
        # counters (received/accepted are kept in locals by the loop and copied here at every tick)
        self.received = 0
        self.accepted = 0
        self.rejected = 0
        self.rejected_by_reason: dict[str, int] = {}
        self.internal_errors_logged = 0
        # open segments: raw by (type, hour index), dead letters by hour index; value [bytes so far, lines].  One
        # growing bytearray per segment rather than a list of line objects: keeping ~20,000 small objects alive per
        # segment made every message ~4 us dearer on the VM (fresh memory for each; the bytearray reuses one block)
        self.raw_buffers: dict[tuple[str, float], list] = {}
        self.dead_buffers: dict[float, list] = {}
        self.close_at: float | None = None  # when the open segments are to be closed
        self.seq = 0
        self.state = "starting"
        self._stop = False
        self._signals = 0

    # ------------------------------------------------------------ set-up

    def bind(self) -> None:
        s = self.settings
        family = socket.AF_INET6 if ":" in s.udp_host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, s.udp_rcvbuf_bytes)
            if self.reuse_port:  # one of several receiver processes: the kernel spreads the port's datagrams over them
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((s.udp_host, s.udp_port))
            # A blocking socket whose receive gives up after TICK_S (SO_RCVTIMEO): the kernel does the waiting, and
            # the loop still wakes at least every TICK_S when nothing arrives.
            sec = int(TICK_S)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", sec, int((TICK_S - sec) * 1e6)))
        except OSError:
            sock.close()
            raise
        self.sock = sock
        self.rcvbuf_granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        host, port = sock.getsockname()[:2]
        self.listen_url = f"udp://[{host}]:{port}" if family == socket.AF_INET6 else f"udp://{host}:{port}"
        log.info("SO_RCVBUF: asked %d bytes, kernel granted %d (Linux reports twice the usable size; "
                 "net.core.rmem_max caps it)", s.udp_rcvbuf_bytes, self.rcvbuf_granted)

    def request_stop(self) -> None:
        """Stop receiving; called from a signal handler (or another thread)."""
        self._signals += 1
        if self._signals == 1:
            self._stop = True
        else:
            self.publisher.give_up()

    # ------------------------------------------------------------ counters

    def counters(self) -> dict:
        p = self.publisher
        return {
            "collector_id": self.settings.collector_id,
            "run_id": self.run_id,
            "pid": os.getpid(),
            "listen": self.listen_url,
            "rcvbuf_bytes": self.rcvbuf_granted,
            "state": self.state,
            "received": self.received,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "rejected_by_reason": dict(self.rejected_by_reason),
            "landed_messages": p.landed_messages,
            "landed_segments": p.landed_segments,
            "deadletter_messages": p.deadletter_messages,
            "deadletter_segments": p.deadletter_segments,
            "pending_segments": p.pending,
            "spooled_segments": p.spooled_segments,
            "shipped_segments": p.shipped_segments,
            "spool_segments": len(p.spool),
            "open_segments": len(self.raw_buffers) + len(self.dead_buffers),
            "signing": self.verifier.counters() if self.verifier is not None else {"mode": "off"},
            "rate_limit": self.limiter.counters() if self.limiter is not None else None,
            "publish_errors": p.publish_errors,
            "last_publish_error": p.last_error,
            "started_at": self.started_at,
            "updated_at": time.time(),
        }

    def write_counters(self) -> None:
        try:
            write_state(self.settings.state_dir, f"collector-{self.settings.collector_id}", self.counters())
        except OSError as exc:  # the counters are for operators; never stop receiving for them
            log.warning("cannot write counters: %s", exc)

    # ------------------------------------------------------------ segments

    def _next_name(self) -> str:
        name = f"{self.name_prefix}{self.seq:06d}"
        self.seq += 1
        return name

    def _open_buffer(self, key: tuple[str, int], recv_ts: float) -> list:
        """A new open segment's [lines, count] for ``key``; the first one opened sets when the open segments close."""
        buf = self.raw_buffers[key] = [bytearray(), 0]
        if self.close_at is None:
            self.close_at = recv_ts + self.settings.segment_max_seconds
        return buf

    def close_segments(self) -> None:
        """Close every open segment and hand it to the publisher (its bytearray itself: the loop drops it here)."""
        for (msg_type, hour), (data, lines) in self.raw_buffers.items():
            path = landing.raw_segment_path(msg_type, hour * 3600.0, self._next_name())
            self.publisher.submit(Segment(path, data, lines, "raw"))
        for hour, (data, lines) in self.dead_buffers.items():
            path = landing.deadletter_segment_path(hour * 3600.0, self._next_name())
            self.publisher.submit(Segment(path, data, lines, "deadletter"))
        self.raw_buffers.clear()
        self.dead_buffers.clear()
        self.close_at = None

    def reject(self, data: bytes, addr, recv_ts: float, reason: str, detail: str) -> None:
        """Count a rejected datagram and add it to the open dead-letter segment."""
        self.rejected += 1
        by_reason = self.rejected_by_reason
        by_reason[reason] = by_reason.get(reason, 0) + 1
        record = {
            "recv_ts": recv_ts,
            "source": f"[{addr[0]}]:{addr[1]}" if ":" in addr[0] else f"{addr[0]}:{addr[1]}",
            "reason": reason,
            "detail": detail,
            "raw_b64": base64.b64encode(data).decode("ascii"),
        }
        try:
            line = orjson.dumps(record) + b"\n"
        except TypeError:  # e.g. a detail with lone surrogates: keep the datagram, drop the detail
            record["detail"] = ""
            line = orjson.dumps(record) + b"\n"
        hour = recv_ts // 3600
        buf = self.dead_buffers.get(hour)
        if buf is None:
            buf = self.dead_buffers[hour] = [bytearray(), 0]
            if self.close_at is None:
                self.close_at = recv_ts + self.settings.segment_max_seconds
        buf[0] += line
        buf[1] += 1
        if len(buf[0]) >= self.settings.segment_max_bytes:
            self.close_segments()

    def rate_limited(self) -> None:
        """Count a datagram dropped by the rate limit (no dead letter: a flood would fill the store)."""
        self.rejected += 1
        self.rejected_by_reason[RATE_LIMITED] = self.rejected_by_reason.get(RATE_LIMITED, 0) + 1

    def sweep(self, now: float) -> None:
        """Every guard.SWEEP_S: forget expired signatures and refilled rate buckets; log who was rate limited."""
        self.next_sweep = now + guard.SWEEP_S
        if self.verifier is not None:
            self.verifier.replays.expire(now)
        if self.limiter is not None:
            self.limiter.sweep(now)
            if now >= self.next_rate_log:
                self.next_rate_log = now + RATE_LIMIT_LOG_S
                report = self.limiter.report()
                if report:
                    log.warning("%s", report)

    def _internal_error(self, data: bytes, addr, recv_ts: float, exc: BaseException) -> None:
        if self.internal_errors_logged < 10:
            self.internal_errors_logged += 1
            log.error("parser failed on a datagram from %s:%s (dead-lettered as %s)", addr[0], addr[1],
                      INTERNAL_ERROR, exc_info=exc)
        self.reject(data, addr, recv_ts, INTERNAL_ERROR, f"{type(exc).__name__}: {exc}"[:200])

    # ------------------------------------------------------------ the loop

    def serve(self) -> int:
        """Receive until stopped, then publish everything; the exit status."""
        assert self.sock is not None, "bind() first"
        self.publisher.start()
        self.state = "running"
        self.write_counters()
        log.info("collector listening on %s (collector %s, run %d, landing %s)", self.listen_url,
                 self.settings.collector_id, self.run_id, self.store.url)
        crashed = False
        try:
            self._receive()
        except Exception:  # noqa: BLE001 - a bug in the loop: still publish what was received
            log.exception("receive loop failed; publishing what was received and stopping")
            crashed = True
        finally:
            self.sock.close()
        code = self._shutdown()
        return 1 if crashed else code

    def _receive(self) -> None:
        s = self.settings
        receiver = BatchReceiver(self.sock)
        receive = receiver.receive
        source = receiver.source
        clock = time.time
        sleep = time.sleep
        fast = self.fast_path.landed if self.fast_path is not None else None
        batch_landed = self.batch_path.landed if self.batch_path is not None else None
        parse = self.verifier.parse if self.verifier is not None else schema.parse_message
        allow = self.limiter.allow if self.limiter is not None else None
        rate_limited = self.rate_limited
        guarded = self.verifier is not None or allow is not None
        landed_line = schema.landed_line
        Rejected = schema.Rejected  # noqa: N806 - local alias for speed
        reject = self.reject
        max_dgram = s.max_datagram_bytes
        skew = s.max_clock_skew_s
        seg_bytes = s.segment_max_bytes
        prefix = self.name_prefix
        raw = self.raw_buffers
        received = self.received
        accepted = self.accepted
        now = clock()
        next_tick = now + TICK_S
        next_stats = now + s.stats_interval_s
        drain_until = None
        wait = True  # True: block for the first datagram (up to TICK_S); False: take what is queued, never block
        try:
            while True:
                try:
                    batch = receive(wait)
                except OSError as exc:  # e.g. ENOBUFS; never stop receiving for it
                    log.warning("recvmmsg failed: %s", exc)
                    batch = []
                recv_ts = now = clock()
                received += len(batch)
                one_by_one = batch
                if batch_landed is not None and len(batch) >= BATCH_PATH_MIN:
                    n = len(batch)
                    landed = batch_landed(batch, recv_ts, accepted)
                    if landed is not None:
                        key = ("health", landed[0])
                        buf = raw.get(key)
                        # a batch that would fill its segment goes datagram by datagram, which closes it at the exact line
                        if (0 if buf is None else len(buf[0])) + len(landed[1]) < seg_bytes:
                            if buf is None:
                                buf = self._open_buffer(key, recv_ts)
                                next_tick = min(next_tick, self.close_at)
                            data_so_far = buf[0]
                            data_so_far += landed[1]
                            buf[1] += n
                            accepted += n
                            one_by_one = ()
                for i, data in enumerate(one_by_one):
                    if allow is not None and not allow(source(i)[0], recv_ts):
                        rate_limited()
                        continue
                    if len(data) > max_dgram:
                        reject(data, source(i), recv_ts, "oversized", f"{len(data)} bytes > max_datagram_bytes={max_dgram}")
                        continue
                    message_id = prefix + str(accepted)
                    try:
                        landed = fast(data, recv_ts, message_id) if fast is not None else None
                        if landed is None:  # not a plain canonical health message: the schema decides
                            msg = parse(data, recv_ts, skew)
                            key = (msg["type"], msg["ts"] // 3600)
                            line = landed_line(msg, message_id, recv_ts)
                        else:
                            line, ts = landed
                            key = ("health", ts // 3600)
                    except Rejected as exc:
                        reject(data, source(i), recv_ts, exc.reason, exc.detail)
                        continue
                    except Exception as exc:  # noqa: BLE001 - a parser bug must not stop the collector
                        self._internal_error(data, source(i), recv_ts, exc)
                        continue
                    accepted += 1
                    buf = raw.get(key)
                    if buf is None:
                        buf = self._open_buffer(key, recv_ts)
                        next_tick = min(next_tick, self.close_at)
                    data_so_far = buf[0]
                    data_so_far += line
                    buf[1] += 1
                    if len(data_so_far) >= seg_bytes:
                        self.close_segments()
                # Interrupt coalescing: a full batch means more is queued, so read on at once; a partial one emptied
                # the socket, so sleep COALESCE_S and take what queued meanwhile (one wake-up per few hundred
                # datagrams instead of one per datagram); nothing after such a sleep means the traffic stopped:
                # block in recvmmsg again.
                if len(batch) == BATCH:
                    wait = False
                elif batch:
                    wait = False
                    if drain_until is None:
                        sleep(COALESCE_S)
                else:
                    wait = drain_until is None
                if now < next_tick and batch:
                    continue
                # tick: copy counters, close due segments, write stats, look at the stop flag
                self.received = received
                self.accepted = accepted
                if self.close_at is not None and now >= self.close_at:
                    self.close_segments()
                if guarded and now >= self.next_sweep:
                    self.sweep(now)
                if now >= next_stats:
                    self.write_counters()
                    next_stats = now + s.stats_interval_s
                next_tick = now + TICK_S
                if self.close_at is not None and self.close_at < next_tick:
                    next_tick = self.close_at
                if self._stop:
                    if drain_until is None:  # read what is already queued, without waiting for more
                        self.state = "stopping"
                        drain_until = now + STOP_DRAIN_S
                        wait = False
                    elif not batch or now >= drain_until:
                        return
        finally:  # the counters stay consistent whatever ends the loop
            self.received = received
            self.accepted = accepted

    def _shutdown(self) -> int:
        """Publish the open segments, wait for the publisher, write the final counters."""
        self.state = "stopping"
        self.close_segments()
        pub = self.publisher
        log.info("collector stopping: publishing %d pending segments", pub.pending)
        pub.close()
        grace_ends = time.monotonic() + STOP_GRACE_S
        last_write = time.monotonic()
        while pub.is_alive():
            pub.join(TICK_S)
            if time.monotonic() >= grace_ends and self._signals < 2:
                self.request_stop()  # as a second signal would: leave the rest in the spool
            if time.monotonic() - last_write >= self.settings.stats_interval_s:
                self.write_counters()
                last_write = time.monotonic()
        self.state = "stopped"
        self.write_counters()
        if len(pub.spool):
            log.warning("collector stopped with %d segments (%d messages) in the spool %s: the landing store was "
                        "unreachable; the next start ships them", len(pub.spool), pub.spool.lines(), pub.spool.directory)
        log.info("collector stopped: received %d, accepted %d, rejected %d, landed %d messages in %d segments, "
                 "%d dead letters", self.received, self.accepted, self.rejected, pub.landed_messages,
                 pub.landed_segments, pub.deadletter_messages)
        return 0


def run(settings: Settings) -> int:
    """The collector until SIGTERM/SIGINT: one receiver process, or a group of them (``collector_processes``)."""
    from ingest import group

    processes = group.receiver_processes(settings)
    group.warn_about_other_spools(settings, processes)
    if processes == 1:
        return run_receiver(settings)
    return group.run_group(settings, processes)


def run_receiver(settings: Settings, reuse_port: bool = False, stop_signals=(signal.SIGTERM, signal.SIGINT)) -> int:
    """One receiver until one of ``stop_signals``; 0 when everything received was published."""
    try:
        collector = Collector(settings, reuse_port=reuse_port)
    except ConfigError as exc:
        log.error("bad setting: %s", exc)
        return 2
    except (OSError, ValueError) as exc:
        log.error("cannot open landing store %s: %s", settings.landing_url, exc)
        return 1
    try:
        collector.bind()
    except OSError as exc:
        log.error("cannot listen on udp://%s:%d: %s", settings.udp_host, settings.udp_port, exc)
        return 1
    in_main = threading.current_thread() is threading.main_thread()
    previous = {}
    if in_main:
        for sig in stop_signals:
            previous[sig] = signal.signal(sig, lambda _signum, _frame: collector.request_stop())
        signal.pthread_sigmask(signal.SIG_UNBLOCK, stop_signals)  # a receiver of a group starts with SIGTERM blocked
    try:
        return collector.serve()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main() -> int:
    """``python -m ingest.collector``: the collector with settings from ``HEALTHMON_*`` only."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"healthmon: bad setting: {exc}", file=sys.stderr)
        return 2
    return run(settings)


if __name__ == "__main__":
    sys.exit(main())
