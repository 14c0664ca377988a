"""Crashes and swaps: ``kill -9`` of the collector and of a batch build, and reads while the views are republished.

The collector keeps accepted messages in memory until their segment closes
(``segment_max_seconds``) and the publisher has renamed it into the landing
store; UDP has no acknowledgement, so a sender never learns that a datagram
was lost.  A ``kill -9`` of the collector therefore loses exactly:

1. the messages in the collector's memory: the open segment(s), and closed
   segments the publisher had not yet renamed into the store;
2. the datagrams queued in the kernel for its socket (received by the
   kernel, not yet read by the collector): the socket dies with the process;
3. the datagrams sent while no collector is listening, until the restart.

``test_kill_9_mid_segment_then_restart`` streams numbered messages at a
steady rate while a lister thread reads every published file as it appears
(as Spark would): no file is ever partial or changes once seen.  Mid-stream it
freezes the collector (SIGSTOP) half-way through a segment; notes what the
store holds and what the collector holds in memory (received minus
published, exact since the sender was paused until ``received`` caught up);
queues more datagrams in the frozen socket (the kernel's own accounting in
``/proc/net/udp`` shows them); then ``kill -9`` and a restart while the
sender keeps going.  It asserts that exactly the messages of classes 1-3 are
missing, that every other message landed exactly once (unique ids), and
that the first run's landed messages are a prefix of what it received
(segments are published in order).

``test_kill_9_with_a_full_spool_ships_it_at_the_next_start``: segments that
the landing store refused wait in the on-disk spool (fsync'ed); a ``kill -9``
does not lose them.

``test_a_batch_build_killed_mid_way_keeps_the_previous_view_served``: real
Spark, a real API and readers; ``test_ten_thousand_reads_during_fifty_view_swaps``:
readers over real HTTP while both views are republished 50 times.
"""

from __future__ import annotations

import http.client
import math
import os
import random
import signal
import socket
import threading
import time
import zlib
from pathlib import Path

import orjson
import pytest
import requests

from healthmon import schema
from healthmon.config import load_settings
from healthmon.landing import LocalLandingStore, landing_for, raw_segment_path
from healthmon.schema import landed_line
from healthmon.state import read_runs
from healthmon.views import BATCH_VIEW
from tests.procs import run_healthmon, start_healthmon, stop_process, wait_until
from tests.test_collector import Collector, landed_rows, read_counters, spool_files, valid_messages
from tests.test_fuzz import udp_socket_stats
from tests.test_merge_rule import expected_series, expected_summary, message, publish_batch, publish_realtime
from tests.test_serving import END, MESSAGES, S0, SERVICES, start_server

RATE = 4000  # messages/s sent while the collector runs
BURST = 40  # messages per send burst
SEGMENT_S = 1.0  # the collector's segment_max_seconds here
QUEUED_WHILE_FROZEN = 300  # datagrams sent into the frozen collector's socket queue
HOUR = 3600


def numbered(seq: int, ts: float) -> bytes:
    """Message ``seq``: its number is in its service name (one hour partition: one open segment at a time)."""
    return schema.encode({"service": f"k{seq:07d}", "ts": ts, "cpu_pct": 1.0, "ram_total_gb": 8, "ram_free_gb": 4,
                          "disk_total_gb": 100, "disk_free_gb": 50})


def seq_of(row: dict) -> int:
    return int(row["service"][1:])


class Sender(threading.Thread):
    """Sends numbered messages at RATE while ``go`` is set; ``pause()`` returns once it has stopped between bursts."""

    def __init__(self, port: int, ts: float) -> None:
        super().__init__(daemon=True)
        self.port, self.ts = port, ts
        self.sent = 0
        self.go = threading.Event()
        self.idle = threading.Event()
        self.done = False

    def run(self) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:  # not connected: no ICMP errors while nobody listens
            next_at = time.monotonic()
            while not self.done:
                if not self.go.is_set():
                    self.idle.set()
                    self.go.wait(0.05)
                    next_at = time.monotonic()
                    continue
                for _ in range(BURST):
                    sock.sendto(numbered(self.sent, self.ts), ("127.0.0.1", self.port))
                    self.sent += 1
                next_at += BURST / RATE
                time.sleep(max(0.0, next_at - time.monotonic()))

    def resume(self) -> None:
        self.idle.clear()
        self.go.set()

    def pause(self) -> int:
        self.go.clear()
        assert self.idle.wait(10)
        return self.sent

    def send_now(self, count: int) -> None:
        """``count`` more messages at once (the sender is paused)."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for _ in range(count):
                sock.sendto(numbered(self.sent, self.ts), ("127.0.0.1", self.port))
                self.sent += 1


class Lister(threading.Thread):
    """Lists the landing store over and over, as a reader would; every published file must be whole and never change."""

    def __init__(self, store: LocalLandingStore) -> None:
        super().__init__(daemon=True)
        self.store = store
        self.seen: dict[str, tuple[int, int]] = {}  # path -> (size, crc32) when first seen
        self.problems: list[str] = []
        self.passes = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.check()
            self.stop.wait(0.01)
        self.check()

    def check(self) -> None:
        for f in self.store.list_files("raw"):
            known = self.seen.get(f.path)
            if known is not None:
                if known[0] != f.size:
                    self.problems.append(f"{f.path} changed size: {known[0]} -> {f.size}")
                continue
            data = self.store.read(f.path)
            if not data.endswith(b"\n"):
                self.problems.append(f"{f.path}: partial (does not end with a newline, {len(data)} bytes)")
            try:
                ids = [orjson.loads(line)["id"] for line in data.splitlines()]
                assert ids and len(ids) == len(set(ids))
            except Exception as exc:  # noqa: BLE001 - any unreadable line is what this looks for
                self.problems.append(f"{f.path}: unreadable ({exc!r})")
            self.seen[f.path] = (len(data), zlib.crc32(data))
        self.passes += 1

    def recheck_contents(self) -> None:
        for path, (size, crc) in self.seen.items():
            data = self.store.read(path)
            if (len(data), zlib.crc32(data)) != (size, crc):
                self.problems.append(f"{path} changed after it was published")


def published_seqs(data_dir: Path) -> list[int]:
    return [seq_of(row) for _, row in landed_rows(data_dir)]


@pytest.mark.slow
def test_kill_9_mid_segment_then_restart(data_dir, free_udp_port):
    ts = time.time() - 30
    collector = Collector(data_dir, free_udp_port, segment_max_seconds=SEGMENT_S)
    store = LocalLandingStore(f"file://{data_dir}/landing")
    lister = Lister(store)
    lister.start()
    sender = Sender(collector.port, ts)
    sender.start()
    sender.resume()
    try:
        # Freeze the collector half-way through a segment: just after one was published, wait half a segment.
        for _attempt in range(5):
            wait_until(lambda: len(lister.seen) >= 2, 30, "two published segments")
            seen = len(lister.seen)
            wait_until(lambda seen=seen: len(lister.seen) > seen, 30, "the next published segment", interval=0.005)
            time.sleep(SEGMENT_S / 2)  # half-way through the next segment
            sent = sender.pause()
            collector.wait(lambda c, sent=sent: c["received"] == sent)  # nothing left in the kernel's queue: 'received' is exact
            os.kill(collector.proc.pid, signal.SIGSTOP)
            landed_at_freeze = sorted(published_seqs(data_dir))
            in_memory = sent - len(landed_at_freeze)
            if in_memory > 0:
                break
            os.kill(collector.proc.pid, signal.SIGCONT)  # the segment closed meanwhile (a slow machine): try again
            sender.resume()
        assert in_memory > 0, "could not freeze the collector with an open segment"
        counters = read_counters(data_dir)
        # The datagrams that will die in the kernel: sent to the frozen process, queued for its socket.
        sender.send_now(QUEUED_WHILE_FROZEN)
        queued_bytes, drops = udp_socket_stats(collector.port)
        assert queued_bytes > 0 and drops == 0
        sent_before_kill = sender.sent

        os.kill(collector.proc.pid, signal.SIGKILL)
        assert collector.stop(None) == -signal.SIGKILL
        assert sorted(published_seqs(data_dir)) == landed_at_freeze  # nothing half-published surfaced

        sender.resume()  # senders do not know the collector is down: what they send now is lost too
        time.sleep(0.3)
        again = Collector(data_dir, free_udp_port, segment_max_seconds=SEGMENT_S)
        wait_until(lambda: read_counters(data_dir)["landed_messages"] >= 1, 30, "the restarted collector publishes")
        total = sender.pause()
        wait_until(lambda: udp_socket_stats(again.port)[0] == 0, 30, "the restarted collector read its socket's queue")
        assert again.stop() == 0, again.output()
    finally:
        sender.done = True
        lister.stop.set()
        lister.join(10)
        for c in (collector, locals().get("again")):
            if c is not None and c.proc.poll() is None:
                c.proc.kill()
                c.proc.wait()

    lister.recheck_contents()
    assert lister.problems == [], lister.problems[:5]
    assert lister.passes > 50

    rows = [row for _, row in landed_rows(data_dir)]
    ids = [row["id"] for row in rows]
    assert len(ids) == len(set(ids))  # every landed message once
    seqs = [seq_of(row) for row in rows]
    assert len(seqs) == len(set(seqs))
    first_run = sorted(seq_of(row) for row in rows if row["id"].startswith(f"c1-{collector.run_id}-"))
    second_run = sorted(seq_of(row) for row in rows if row["id"].startswith(f"c1-{again.run_id}-"))
    assert len(first_run) + len(second_run) == len(rows)

    # The first run's landed messages: exactly what was published when it froze, a prefix of what it received.
    assert first_run == landed_at_freeze == list(range(len(landed_at_freeze)))
    # Lost to the crash: the messages in its memory (open segment, unpublished closed segments), then the socket queue.
    published_n = len(first_run)
    lost_in_memory = list(range(published_n, published_n + in_memory))
    lost_in_socket = list(range(published_n + in_memory, sent_before_kill))
    assert len(lost_in_socket) == QUEUED_WHILE_FROZEN
    assert not set(lost_in_memory + lost_in_socket) & set(seqs)
    # The restarted collector lands everything from the first datagram it received on, with no gap.
    assert second_run and second_run[0] >= sent_before_kill
    assert second_run == list(range(second_run[0], second_run[0] + len(second_run)))
    assert second_run[-1] == total - 1
    lost_while_down = second_run[0] - sent_before_kill
    assert set(range(total)) - set(seqs) == set(lost_in_memory + lost_in_socket + list(range(sent_before_kill, second_run[0])))

    again_counters = read_counters(data_dir)
    assert again_counters["accepted"] == again_counters["landed_messages"] == len(second_run)
    leftovers = [p.name for p in (data_dir / "landing").rglob("*") if p.is_file() and p.name.startswith(("_", "."))]
    assert all(name.startswith(f"_c1-{collector.run_id}-") and name.endswith(".tmp") for name in leftovers), leftovers
    print(f"\nkill -9 at {RATE} msg/s, {SEGMENT_S} s segments: {published_n} published before the crash landed once; lost "
          f"{in_memory} in the collector's memory (open segments: {counters['open_segments']}, unpublished closed: "
          f"{counters['pending_segments']}), {len(lost_in_socket)} queued in its socket ({queued_bytes} bytes), "
          f"{lost_while_down} sent while it was down; {len(second_run)} landed after the restart; "
          f"{len(leftovers)} hidden temporary files left by an interrupted publish")


def test_kill_9_with_a_full_spool_ships_it_at_the_next_start(data_dir, free_udp_port):
    """Closed segments in the spool (the store refused them) are on disk, fsync'ed: a kill -9 does not lose them."""
    blocker = data_dir / "landing" / "raw"  # a file where the raw/ directory should be: every raw publish fails
    blocker.parent.mkdir(parents=True)
    blocker.write_bytes(b"")
    collector = Collector(data_dir, free_udp_port, segment_max_seconds=0.2)
    messages = valid_messages(time.time(), 50)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for m in messages:
            sock.sendto(schema.encode(m), ("127.0.0.1", collector.port))
    collector.wait(lambda c: c["received"] == 50 and c["open_segments"] == 0 and c["spool_segments"] >= 1
                            and c["pending_segments"] == c["spool_segments"])
    collector.proc.kill()
    assert collector.stop(None) == -signal.SIGKILL
    assert spool_files(data_dir)
    blocker.unlink()
    again = Collector(data_dir, free_udp_port, segment_max_seconds=0.2)
    again.wait(lambda c: c["pending_segments"] == 0 and c["shipped_segments"] >= 1)
    assert again.stop() == 0
    rows = [row for _, row in landed_rows(data_dir)]
    assert sorted(row["service"] for row in rows) == sorted(m["service"] for m in messages)
    assert len({row["id"] for row in rows}) == len(rows)
    assert spool_files(data_dir) == []


# ---------------------------------------------------------------- a batch build killed mid-way, with real Spark


def _summary_of(answer: dict) -> dict[str, tuple[int, float]]:
    """The exact part of a summary answer: per service, its count and largest cpu_pct."""
    return {s["service"]: (s["count"], s["cpu_pct"]["max"]) for s in answer["services"]}


def _expected_summary(messages: list[dict]) -> dict[str, tuple[int, float]]:
    out: dict[str, tuple[int, float]] = {}
    for m in messages:
        count, cpu_max = out.get(m["service"], (0, -1.0))
        out[m["service"]] = (count + 1, max(cpu_max, m["cpu_pct"]))
    return out


class Readers:
    """Threads that read the API over HTTP until stopped; every answer and error is kept with when it came."""

    def __init__(self, url: str, params: dict, threads: int = 2, pause_s: float = 0.03) -> None:
        self.url, self.params, self.pause_s = url, params, pause_s  # the pause leaves CPU to the Spark builds
        self.answers: list[tuple[float, dict]] = []
        self.errors: list[str] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._read, daemon=True) for _ in range(threads)]
        for t in self.threads:
            t.start()

    def _read(self) -> None:
        session = requests.Session()
        while not self.stop.is_set():
            try:
                resp = session.get(f"{self.url}/api/v1/summary", params=self.params, timeout=10)
                at = time.monotonic()
                with self.lock:
                    if resp.status_code == 200:
                        self.answers.append((at, _summary_of(resp.json())))
                    else:
                        self.errors.append(f"{resp.status_code}: {resp.text[:300]}")
            except Exception as exc:  # noqa: BLE001 - any failure is what the readers look for
                with self.lock:
                    self.errors.append(repr(exc))
            self.stop.wait(self.pause_s)

    def since(self, at: float) -> list[dict]:
        with self.lock:
            return [answer for when, answer in self.answers if when >= at]

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(15)


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (the Spark JVM of a healthmon batch process)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _landed_hour(store, hour: int, name: str, count: int, seed: int) -> list[dict]:
    """Publish one raw segment of ``count`` health messages in ``hour`` (as the collector would), return them."""
    rng = random.Random(seed)
    messages = [{"type": "health", "service": f"svc{i % 3}", "ts": hour + rng.uniform(0, HOUR - 1),
                 "cpu_pct": round(rng.uniform(0, 100), 3), "ram_total_gb": 32, "ram_free_gb": 16.0, "disk_total_gb": 100,
                 "disk_free_gb": 50.0} for i in range(count)]
    lines = b"".join(landed_line(m, f"{name}-{i}", hour + HOUR) for i, m in enumerate(messages))
    store.publish(raw_segment_path("health", hour, name), lines)
    return messages


@pytest.mark.slow
@pytest.mark.spark
def test_a_batch_build_killed_mid_way_keeps_the_previous_view_served(tmp_path, free_tcp_port):
    """The scheduler builds a first view; more data lands; ``kill -9`` of the scheduler while its next build has copied the
    view and Spark is writing master: the API keeps serving the first view, with no error, and ``healthmon batch`` then
    builds the right counts."""
    env = {"HEALTHMON_DATA_DIR": str(tmp_path), "HEALTHMON_API_PORT": str(free_tcp_port), "HEALTHMON_BATCH_INTERVAL_S": "3"}
    settings = load_settings(environ=env)
    store = landing_for(settings)
    current = int(time.time() // HOUR) * HOUR
    first = [m for k in range(3) for m in _landed_hour(store, current - (4 - k) * HOUR, f"c1-1-{k:06d}", 300, seed=k)]
    scheduler = start_healthmon(["schedule", "--jobs", "batch"], env)
    server = start_healthmon(["serve"], env)
    url = f"http://127.0.0.1:{free_tcp_port}"
    readers = None
    try:
        wait_until(lambda: any(r["status"] == "ok" and r["hours_rebuilt"] == 3 for r in read_runs(settings.state_dir)), 300,
                   "the scheduler's first build")
        wait_until(lambda: requests.get(f"{url}/healthz", timeout=1).ok, 60, "API up")
        readers = Readers(url, {"from": current - 6 * HOUR, "to": current - HOUR})
        wait_until(lambda: readers.since(0), 30, "a first answer")
        before = _expected_summary(first)
        assert readers.since(0)[0] == before

        # More data: a late segment for an hour already built, and a new hour.  The next build is killed mid-way.
        late = _landed_hour(store, current - 4 * HOUR, "c1-2-000001", 120, seed=10)
        new = _landed_hour(store, current - 5 * HOUR, "c1-2-000002", 150, seed=11)
        view = settings.views_dir / BATCH_VIEW
        master = settings.data_path / "landing" / "master" / "type=health"

        def mid_way() -> bool:
            assert scheduler.poll() is None, Path(scheduler.log_path).read_text()[-3000:]
            building = list(view.parent.glob(f".{BATCH_VIEW}.*.tmp"))
            return bool(building) and any(p.name.startswith(".spark-staging") for p in master.iterdir())

        wait_until(mid_way, 300, "a build that copied the view while Spark writes master", interval=0.01)
        published_view = view.read_bytes()
        jvms = _children(scheduler.pid)
        assert jvms, "the scheduler's Spark JVM"
        scheduler.send_signal(signal.SIGKILL)
        assert scheduler.wait(30) == -signal.SIGKILL
        killed_at = time.monotonic()
        # The JVM goes with the Python driver (it ends when its stdin pipe closes): no Spark is left behind.
        wait_until(lambda: not any(_alive(pid) for pid in jvms), 60, "the killed scheduler's JVM to exit")
        time.sleep(1.0)  # the readers go on reading the view that the killed build left alone
        assert view.read_bytes() == published_view
        assert readers.since(killed_at) and all(answer == before for answer in readers.since(killed_at))
        assert list(view.parent.glob(f".{BATCH_VIEW}.*.tmp")), "the killed build's copy (removed by the next writer)"

        rebuilt_at = time.monotonic()
        done = run_healthmon(["batch"], env, timeout=600)
        assert "2 hours rebuilt" in done.stdout, done.stdout
        after = _expected_summary(first + late + new)
        wait_until(lambda: readers.since(time.monotonic() - 0.5)[-1:] == [after], 30, "the new view served")
    finally:
        if readers is not None:
            readers.close()
        if scheduler.poll() is None:
            scheduler.kill()
            scheduler.wait()
        rc = stop_process(server, timeout=30)

    assert readers.errors == [], readers.errors[:5]
    assert rc == 0
    answers = readers.since(0)
    assert all(answer == before for answer in answers[: len(answers) - len(readers.since(rebuilt_at))])
    assert all(answer in (before, after) for answer in readers.since(rebuilt_at))
    assert len(answers) > 100
    assert sorted(p.name for p in view.parent.iterdir()) == [BATCH_VIEW, f"{BATCH_VIEW}.lock"]  # no copy left behind
    assert not [p for p in master.rglob("*") if p.name.startswith(".spark-staging")]


# ---------------------------------------------------------------- reads over HTTP while the views are republished

READS = 10_000
SWAPS = 50


@pytest.mark.slow
def test_ten_thousand_reads_during_fifty_view_swaps(tmp_path, free_tcp_port):
    """Readers in 4 threads over real HTTP; every ~200 reads one view file is replaced (25 real-time versions, each with one
    more message, and 25 batch views with the horizon moving back and forth): no error, and every answer is consistent."""
    settings = load_settings({"data_dir": str(tmp_path)}, environ={})
    horizons = (S0 + HOUR, S0 + 2 * HOUR)
    extras = [message(SERVICES[j % 2], END - 1800 + 7 * j + 0.25, float(j % 100), 30.0 + j % 7, 60.0) for j in range(SWAPS // 2)]
    versions = [MESSAGES + extras[:j] for j in range(len(extras) + 1)]
    summaries = [{name: (e["count"], e["cpu_pct"]["max"], e["ram_used_pct"]["avg"]) for name, e in expected_summary(v, S0, END).items()}
                 for v in versions]
    series = [{name: [p["count"] for p in expected_series(v, name, S0, END, HOUR)] for name in SERVICES} for v in versions]
    totals = [len(v) for v in versions]
    publish_batch(settings.views_dir, MESSAGES, horizons[0])
    publish_realtime(settings.views_dir, versions[0], S0)
    proc, _url = start_server(tmp_path, free_tcp_port)

    lock = threading.Lock()
    reads, errors, seen = [0], [], set()
    swaps = [0]

    def get(connection: http.client.HTTPConnection, path: str) -> dict:
        connection.request("GET", path)
        resp = connection.getresponse()
        body = resp.read()
        assert resp.status == 200, (resp.status, body[:300])
        return orjson.loads(body)

    def check(kind: int, connection: http.client.HTTPConnection) -> tuple[bool, object]:
        if kind == 0:
            answer = get(connection, f"/api/v1/summary?from={S0}&to={END}")
            got = {s["service"]: (s["count"], s["cpu_pct"]["max"], s["ram_used_pct"]["avg"]) for s in answer["services"]}
            matches = [j for j, want in enumerate(summaries) if got.keys() == want.keys() and all(
                got[k][:2] == want[k][:2] and math.isclose(got[k][2], want[k][2], rel_tol=1e-12) for k in want)]
            return bool(matches), matches[0] if matches else got
        if kind == 1:
            name = SERVICES[reads[0] % 2]
            answer = get(connection, f"/api/v1/services/{name}/series?from={S0}&to={END}&step=1h")
            counts = [p["count"] for p in answer["points"]]
            return any(counts == s[name] for s in series), counts
        answer = get(connection, "/api/v1/services")
        total = sum(s["count"] for s in answer["services"])
        return total in totals, total

    def reader(n: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", free_tcp_port, timeout=10)  # lighter than requests: the CPU goes to the server
        i = n
        while True:
            with lock:
                if reads[0] >= READS and swaps[0] >= SWAPS:
                    return
            try:
                ok, what = check(i % 3, connection)
            except Exception as exc:  # noqa: BLE001 - any failure is what this test looks for
                ok, what = False, repr(exc)
                connection.close()
            with lock:
                reads[0] += 1
                if not ok:
                    errors.append(what)
                elif i % 3 == 0:
                    seen.add(what)
            i += 1

    threads = [threading.Thread(target=reader, args=(n,)) for n in range(4)]
    started = time.monotonic()
    for t in threads:
        t.start()
    try:
        for swap in range(1, SWAPS + 1):
            due = swap * READS // (SWAPS + 1)
            wait_until(lambda due=due: reads[0] >= due or errors, 120, f"{due} reads before swap {swap}", interval=0.002)
            if swap % 2:
                publish_realtime(settings.views_dir, versions[(swap + 1) // 2], S0)
            else:
                publish_batch(settings.views_dir, MESSAGES, horizons[(swap // 2) % 2])
            with lock:
                swaps[0] += 1
    finally:
        with lock:
            swaps[0] = SWAPS
        for t in threads:
            t.join(120)
        rc = stop_process(proc, timeout=10)
    print(f"\n{reads[0]} reads in {time.monotonic() - started:.1f} s during {swaps[0]} view swaps; {len(seen)} of the "
          f"{len(versions)} summaries seen; {len(errors)} errors")
    assert errors == [], errors[:5]
    assert reads[0] >= READS and swaps[0] == SWAPS
    assert len(seen) > SWAPS // 4  # the readers did see the views change, many times
    assert rc == 0
