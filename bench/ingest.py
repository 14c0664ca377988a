"""Ingest benchmark: the collector's sustained msg/s with zero loss, against a bare receiver and a real peer.

    python bench/ingest.py [--rates 25000,50000,...,250000] [--seconds 3] [--attempts 2]
                           [--processes 2] [--sender-rate 120000] [--no-peer] [--only collector-2,statsd]

In one run, every receiver below is started fresh for every offered rate,
fed the same pre-built ~213-byte datagrams over loopback for ``--seconds``,
given time to drain, and stopped:

- ``bare-1``: one process that only calls ``recv()`` in a loop and counts (the
  raw rate of a bare receiver); ``bare-N``: N of them sharing the port with
  ``SO_REUSEPORT``;
- ``collector-1``: ``healthmon collect`` as it is by default (one process);
  ``collector-N``: with ``collector_processes=N`` (N receiver processes with
  ``SO_REUSEPORT``).  Every accepted message must also be landed: the lines
  on disk are counted;
- ``statsd``: Etsy's statsd (npm ``statsd@0.9.0``, installed by this script
  into ``bench/.peers/statsd`` when missing), a single Node.js process, no
  backend, fed the same number of datagrams carrying the same six values as
  statsd gauges (~230 bytes each); its own ``statsd.packets_received`` counter
  (management port, ``counters``) says what it took.  Its UDP socket gets
  the same 4 MiB receive buffer as the collector's (a copy of its
  ``servers/udp.js`` that passes ``recvBufferSize``); as shipped it keeps the
  208 KiB default and loses more.

The senders are as few processes as the rate allows (one per
``--sender-rate`` msg/s: every sender process takes CPU from the receivers
on these 2 cores) with pre-built datagrams, sent with ``sendmmsg`` in bursts
of 32 from 256 sockets in turn (so the kernel's ``SO_REUSEPORT`` hash, which
picks a receiver by source address and port, spreads them evenly, as many
hosts would); the offered rate they actually reached is reported beside the
target.
A run has zero loss when every datagram sent was received (bare, statsd) or
accepted and landed (collector).  A run that lost datagrams is repeated once
(``--attempts``), for every receiver alike, and the better attempt counts:
the machine is shared, and a 3-second run that another process interrupts
for ~0.1 s overflows any receive buffer (the attempts are recorded).  Per receiver: the highest offered rate it
took with zero loss (its sustained rate), the most it delivered at any rate,
its CPU time per datagram, and the peak RSS of each of its processes
(``VmHWM``, the kernel's high-water mark; process trees through psutil).

Results: ``bench/results/ingest.json`` and a chart of each figure against
its target, ``bench/results/ingest.png``.  Sender and receivers share the
machine (2 cores here): the figures are what they reach together, and they
drop when other processes compete for the CPUs (the load average is
recorded before and after).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import figure, machine, write_results  # noqa: E402
from ingest.recvmmsg import IoVec, MMsgHdr  # noqa: E402 - the C structs of sendmmsg(2), declared once, for the collector
from tests.procs import free_port  # noqa: E402

RESULTS = REPO / "bench" / "results"
PEERS = REPO / "bench" / ".peers"
STATSD_VERSION = "0.9.0"
DEFAULT_RATES = (25_000, 50_000, 75_000, 100_000, 125_000, 150_000, 175_000, 200_000, 225_000, 250_000)
RCVBUF = 4 * 1024 * 1024  # every receiver's SO_RCVBUF: the collector's default
SOCKETS_PER_SENDER = 256  # source ports per sender process: the SO_REUSEPORT hash spreads them, as it would many hosts
SENDER_RATE = 120_000  # msg/s one sender process offers at most (more processes above it)
TARGET_RATE = 100_000  # msg/s with zero loss (issue 7)
TARGET_RAW_SHARE = 0.40  # of the bare receiver's rate
TARGET_RSS_MB = 150.0  # peak RSS of a collector process at the top rate
DRAIN_QUIET_S = 0.5  # a receiver has drained when its count did not move for this long
CAPACITY_DATAGRAMS = 600_000  # queued for a capacity run: a few seconds of draining for every receiver
CAPACITY_RCVBUF = 1 << 30  # SO_RCVBUF of a capacity run: the whole burst fits in the queue


# ---------------------------------------------------------------- datagrams


def health_messages(count: int, now: float) -> list[dict]:
    """``count`` distinct valid canonical health messages (~213 bytes encoded)."""
    return [{
        "service": f"checkout-svc-{i % 200:03d}",
        "host": f"host-{i % 20:02d}",
        "ts": round(now - (i % 50) * 0.01, 6),
        "cpu_pct": round((i * 7.3) % 100, 2),
        "ram_total_gb": 32.0,
        "ram_free_gb": 4.25 + (i % 25),
        "disk_total_gb": 512.0,
        "disk_free_gb": 100.5 + (i % 300),
        "net": {"eth0": {"rx_bps": 1000 + i, "tx_bps": 2000 + i}},
    } for i in range(count)]


def make_datagrams(count: int = 1000, now: float | None = None) -> list[bytes]:
    """``count`` distinct, valid, pre-encoded health datagrams of ~213 bytes."""
    sys.path.insert(0, str(REPO))
    from healthmon import schema

    return [schema.encode(m) for m in health_messages(count, time.time() if now is None else now)]


def statsd_datagrams(count: int = 1000) -> list[bytes]:
    """The same messages as statsd gauges: one datagram per message, one line per value."""
    out = []
    for m in health_messages(count, time.time()):
        prefix = f"{m['service']}.{m['host']}"
        values = {k: m[k] for k in ("cpu_pct", "ram_total_gb", "ram_free_gb", "disk_total_gb", "disk_free_gb")}
        values["net_eth0_rx_bps"] = m["net"]["eth0"]["rx_bps"]
        out.append("\n".join(f"{prefix}.{k}:{v}|g" for k, v in values.items()).encode())
    return out


# ---------------------------------------------------------------- roles run in child processes


class BatchSender:
    """Pre-built datagrams sent with ``sendmmsg(2)`` (ctypes) on connected sockets: one system call per burst.

    The senders share the 2 cores with the receivers under test; one ``send`` per datagram would cost them ~1 us
    more each (the system call), CPU the receivers then lack.
    """

    BURST = 32  # datagrams per system call (and per socket in turn)

    def __init__(self, datagrams: list[bytes], socks: list[socket.socket]) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self._sendmmsg = libc.sendmmsg
        self._sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
        self.fds = [s.fileno() for s in socks]
        self.load(datagrams)

    def load(self, datagrams: list[bytes]) -> None:
        self.count = len(datagrams)
        self._buffers = [ctypes.create_string_buffer(d, len(d)) for d in datagrams]
        self._iovecs = (IoVec * self.count)()
        self._headers = (MMsgHdr * self.count)()
        for i, (buf, data) in enumerate(zip(self._buffers, datagrams, strict=True)):
            self._iovecs[i].base, self._iovecs[i].length = ctypes.addressof(buf), len(data)
            self._headers[i].hdr.iov, self._headers[i].hdr.iovlen = ctypes.pointer(self._iovecs[i]), 1
        self._base, self._stride = ctypes.addressof(self._headers), ctypes.sizeof(MMsgHdr)

    def send(self, first: int, count: int, turn: int) -> int:
        """Send datagrams ``first`` .. ``first + count - 1`` (no wrap-around) from socket ``turn``; how many went."""
        done = self._sendmmsg(self.fds[turn % len(self.fds)], self._base + first * self._stride, count, 0)
        return max(0, done)


def role_send(port: int, rate: float, seconds: float, kind: str) -> None:
    """Send ``kind`` datagrams at ``rate``/s for ``seconds`` (0: until SIGTERM) from SOCKETS_PER_SENDER sockets in turn.

    ``kind``: ``json`` (health datagrams), ``statsd`` (the same values as statsd lines) or ``live`` (health datagrams
    whose ts is rebuilt every second, for a load the speed layer counts).  Prints {"sent", "seconds", ...} as JSON.
    """
    datagrams = statsd_datagrams() if kind == "statsd" else make_datagrams()
    signal.signal(signal.SIGTERM, _raise_stop)
    socks = []
    for _ in range(SOCKETS_PER_SENDER):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, RCVBUF)
        sock.connect(("127.0.0.1", port))
        socks.append(sock)
    sender = BatchSender(datagrams, socks)
    clock = time.perf_counter
    sent = errors = turn = 0
    print("ready", flush=True)
    sys.stdin.readline()  # the go signal: every sender starts at once
    start = clock()
    end = start + seconds if seconds > 0 else float("inf")
    refresh_at = start + 1.0
    try:
        while True:
            now = clock()
            if now >= end:
                break
            if kind == "live" and now >= refresh_at:
                datagrams, refresh_at = make_datagrams(), now + 1.0
                sender.load(datagrams)
            due = int((now - start) * rate)
            if sent + errors >= due:
                time.sleep(min(0.0002, end - now))
                continue
            first = (sent + errors) % sender.count
            count = min(due - sent - errors, BatchSender.BURST, sender.count - first)
            went = sender.send(first, count, turn)
            turn += 1
            sent += went
            errors += count - went
    except _Stop:
        pass
    print(json.dumps({"sent": sent, "seconds": clock() - start, "errors": errors,
                      "bytes_avg": sum(map(len, datagrams)) / len(datagrams)}), flush=True)


class _Stop(Exception):
    pass


def _raise_stop(_signum, _frame):
    raise _Stop


def role_bare(port: int, reuse_port: bool, rcvbuf: int) -> None:
    """recv() in a loop and count; print {"received"} at SIGTERM."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    recv = sock.recv
    received = 0
    signal.signal(signal.SIGTERM, _raise_stop)
    print("ready", flush=True)
    try:
        while True:
            recv(65535)
            received += 1
    except _Stop:
        pass
    print(json.dumps({"received": received}), flush=True)


# ---------------------------------------------------------------- measuring processes


def _peak_rss_kb(pid: int) -> int | None:
    """The kernel's high-water mark of the process's resident memory (VmHWM), kB; None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


class TreeMonitor(threading.Thread):
    """Follows a process and its children (psutil): peak RSS per process and CPU seconds, until stopped."""

    def __init__(self, root_pids: list[int]) -> None:
        super().__init__(daemon=True)
        import psutil

        self.psutil = psutil
        self.roots = [psutil.Process(pid) for pid in root_pids]
        self.peak_kb: dict[int, int] = {}
        self.cpu_s: dict[int, float] = {}
        self.labels: dict[int, str] = {}
        self._stop_event = threading.Event()

    def sample(self) -> None:
        procs = []
        for root in self.roots:
            procs.append(root)
            try:
                procs.extend(root.children(recursive=True))
            except self.psutil.Error:
                pass
        for proc in procs:
            peak = _peak_rss_kb(proc.pid)
            if peak is None:
                continue
            self.peak_kb[proc.pid] = max(peak, self.peak_kb.get(proc.pid, 0))
            try:
                self.cpu_s[proc.pid] = sum(proc.cpu_times()[:2])
                if proc.pid not in self.labels:
                    self.labels[proc.pid] = "main" if proc in self.roots else "child"
            except self.psutil.Error:
                pass

    def run(self) -> None:
        while not self._stop_event.wait(0.2):
            self.sample()

    def stop(self) -> None:
        self._stop_event.set()
        self.join()

    def cpu_total(self) -> float:
        return sum(self.cpu_s.values())


def run_senders(port: int, rate: int, seconds: float, sender_rate: int, kind: str, progress) -> dict:
    """Start one sender process per ``sender_rate`` msg/s, let them all go at once, wait; the offered load they reached."""
    senders = max(1, -(-rate // sender_rate))
    procs = [subprocess.Popen([sys.executable, __file__, "--role", "send", "--port", str(port), "--rate", str(rate / senders),
                               "--seconds", str(seconds), "--kind", kind], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for _ in range(senders)]
    for proc in procs:
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("a sender did not start")
    for proc in procs:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    started, done = time.monotonic(), 0.0
    while any(p.poll() is None for p in procs):
        time.sleep(0.1)
        step = min(seconds, time.monotonic() - started) - done
        if step > 0:
            progress.update(step)
            done += step
    progress.update(max(0.0, seconds - done))
    outs = []
    for proc in procs:
        out, _ = proc.communicate()
        if proc.returncode:
            raise RuntimeError(f"sender failed ({proc.returncode})")
        outs.append(json.loads(out.strip().splitlines()[-1]))
    return {"sent": sum(o["sent"] for o in outs), "seconds": max(o["seconds"] for o in outs),
            "errors": sum(o["errors"] for o in outs), "bytes_avg": outs[0]["bytes_avg"]}


def wait_quiet(count, timeout: float = 10.0) -> None:
    """Wait until ``count()`` stops moving (the receiver drained its socket), at most ``timeout``."""
    last, since, deadline = None, time.monotonic(), time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = count()
        if value != last:
            last, since = value, time.monotonic()
        elif time.monotonic() - since >= DRAIN_QUIET_S:
            return
        time.sleep(0.1)


# ---------------------------------------------------------------- the receivers under test


class Bare:
    """``processes`` bare recv() loops on one port (SO_REUSEPORT when more than one)."""

    kind = "json"

    def __init__(self, processes: int) -> None:
        self.processes = processes
        self.name = f"bare-{processes}"
        self.label = f"bare recv() loop, {processes} process{'es' if processes > 1 else ''}"

    def start(self, port: int, rcvbuf: int = RCVBUF) -> list[int]:
        args = [sys.executable, __file__, "--role", "bare", "--port", str(port), "--rcvbuf", str(rcvbuf)]
        args += ["--reuse-port"] if self.processes > 1 else []
        self.procs = [subprocess.Popen(args, stdout=subprocess.PIPE, text=True) for _ in range(self.processes)]
        for proc in self.procs:
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError("bare receiver did not start")
        return [p.pid for p in self.procs]

    def drain(self) -> None:
        time.sleep(1.0)  # bare loops keep up with what queued; the count is only read at the end

    def stop(self) -> dict:
        received = 0
        for proc in self.procs:
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=10)
            received += json.loads(out.strip().splitlines()[-1])["received"]
        return {"received": received, "accepted": received}


class Collector:
    """``healthmon collect`` with ``collector_processes`` = ``processes``, in a fresh data directory."""

    kind = "json"

    def __init__(self, processes: int, code: Path = REPO, tag: str = "") -> None:
        self.processes = processes
        self.code = code  # the tree whose healthmon runs (--baseline: an earlier version, side by side)
        self.name = f"collector-{processes}{tag}"
        self.label = f"healthmon collector, {processes} process{'es' if processes > 1 else ''}" + (f" ({code})" if tag else "")

    def _states(self) -> list[dict]:
        out = []
        for path in sorted((self.tmp / "state").glob("collector-*.json")):
            try:
                out.append(json.loads(path.read_text()))
            except (OSError, json.JSONDecodeError):
                pass
        return out

    def start(self, port: int, rcvbuf: int = RCVBUF) -> list[int]:
        self.tmp = Path(tempfile.mkdtemp(prefix="healthmon-bench-"))
        env = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHMON_")}
        env.update({"HEALTHMON_DATA_DIR": str(self.tmp), "HEALTHMON_UDP_PORT": str(port), "HEALTHMON_STATS_INTERVAL_S": "0.2",
                    "HEALTHMON_COLLECTOR_PROCESSES": str(self.processes), "HEALTHMON_UDP_RCVBUF_BYTES": str(rcvbuf),
                    "PYTHONPATH": os.pathsep.join(filter(None, [str(self.code), env.get("PYTHONPATH")]))})
        self.log = open(self.tmp / "collector.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "healthmon.cli", "collect"], env=env, cwd=self.tmp, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while not ((states := self._states()) and len(states) == self.processes and all(s["state"] == "running" for s in states)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("collector did not start: " + (self.tmp / "collector.log").read_text()[-2000:])
            time.sleep(0.05)
        return [self.proc.pid]

    def drain(self) -> None:
        wait_quiet(lambda: sum(s.get("received", 0) for s in self._states()))

    def stop(self) -> dict:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(30)
        self.log.close()
        states = self._states()
        if code != 0 or len(states) != self.processes or any(s["state"] != "stopped" for s in states):
            raise RuntimeError(f"collector exited {code}: " + (self.tmp / "collector.log").read_text()[-2000:])
        landed = sum(1 for p in (self.tmp / "landing" / "raw").rglob("*.jsonl") if not p.name.startswith(("_", "."))
                     for _ in p.open("rb"))
        total = {key: sum(s[key] for s in states) for key in ("received", "accepted", "rejected", "landed_messages")}
        shutil.rmtree(self.tmp, ignore_errors=True)
        return {**total, "landed_lines_on_disk": landed, "received_by_process": [s["received"] for s in states]}


class Statsd:
    """Etsy's statsd (npm), one Node.js process, no backend, with a 4 MiB receive buffer."""

    kind = "statsd"
    name = "statsd"
    label = f"Etsy statsd {STATSD_VERSION} (Node.js, 1 process)"
    processes = 1

    def __init__(self) -> None:
        self.home = PEERS / "statsd"
        self.stats_js = self.home / "node_modules" / "statsd" / "stats.js"

    def install(self) -> str | None:
        """Install statsd when missing; None when ready, else why it cannot run."""
        if not shutil.which("node") or not shutil.which("npm"):
            return "node or npm is not installed"
        if not self.stats_js.exists():
            self.home.mkdir(parents=True, exist_ok=True)
            print(f"installing statsd@{STATSD_VERSION} into {self.home.relative_to(REPO)} (npm) ...", flush=True)
            done = subprocess.run(["npm", "install", "--prefix", str(self.home), f"statsd@{STATSD_VERSION}", "--no-audit", "--no-fund",
                                   "--ignore-scripts"], capture_output=True, text=True, timeout=600)
            if done.returncode or not self.stats_js.exists():
                return f"npm install statsd@{STATSD_VERSION} failed: {done.stderr.strip()[-300:]}"
        # statsd's servers/udp.js as shipped, plus the receive buffer every receiver here gets
        (self.home / "udp_rcvbuf.js").write_text(
            "const dgram = require('dgram');\n"
            "exports.start = function (config, callback) {\n"
            "  const server = dgram.createSocket({type: 'udp4', recvBufferSize: config.recvBufferSize}, callback);\n"
            "  server.bind(config.port, config.address);\n"
            "  this.server = server;\n"
            "  return true;\n"
            "};\n")
        return None

    def _admin(self, command: str) -> str:
        with socket.create_connection(("127.0.0.1", self.mgmt_port), timeout=5) as conn:
            conn.sendall(command.encode() + b"\n")
            data = b""
            while b"END" not in data and not data.startswith(b"health"):
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
                if command == "health" and data.endswith(b"\n"):
                    break
        return data.decode()

    def packets_received(self) -> int:
        counters = self._admin("counters")
        match = re.search(r"'statsd\.packets_received': (\d+)", counters)
        if not match:
            raise RuntimeError(f"no packets_received in statsd's counters: {counters[:300]!r}")
        self.bad_lines = int((re.search(r"'statsd\.bad_lines_seen': (\d+)", counters) or [0, 0])[1])
        return int(match.group(1))

    def start(self, port: int, rcvbuf: int = RCVBUF) -> list[int]:
        self.mgmt_port = free_port(socket.SOCK_STREAM)
        self.tmp = Path(tempfile.mkdtemp(prefix="healthmon-bench-statsd-"))
        config = {"port": port, "address": "127.0.0.1", "mgmt_port": self.mgmt_port, "mgmt_address": "127.0.0.1",
                  "flushInterval": 3_600_000, "backends": [],
                  "servers": [{"server": str(self.home / "udp_rcvbuf.js"), "port": port, "address": "127.0.0.1", "recvBufferSize": rcvbuf}]}
        (self.tmp / "config.js").write_text(json.dumps(config))
        self.log = open(self.tmp / "statsd.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(["node", str(self.stats_js), str(self.tmp / "config.js")], cwd=self.stats_js.parent,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                if "health: up" in self._admin("health"):
                    break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("statsd did not start: " + (self.tmp / "statsd.log").read_text()[-2000:])
            time.sleep(0.1)
        return [self.proc.pid]

    def drain(self) -> None:
        wait_quiet(self.packets_received)

    def stop(self) -> dict:
        received = self.packets_received()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)
        return {"received": received, "accepted": received, "bad_lines": self.bad_lines}


# ---------------------------------------------------------------- one run, the summary, the chart


def bench_one(subject, rate: int, seconds: float, sender_rate: int, progress) -> dict:
    port = free_port(socket.SOCK_DGRAM)
    pids = subject.start(port)
    monitor = TreeMonitor(pids)
    monitor.sample()
    cpu_before = monitor.cpu_total()
    monitor.start()
    try:
        sent = run_senders(port, rate, seconds, sender_rate, subject.kind, progress)
        subject.drain()
        monitor.sample()
        cpu_used = monitor.cpu_total() - cpu_before
        counts = subject.stop()
    finally:
        monitor.stop()
    secs = sent["seconds"]
    delivered = counts["accepted"]
    row = {
        "target_per_s": rate,
        "sent": sent["sent"],
        "send_errors": sent["errors"],
        "send_seconds": round(secs, 3),
        "offered_per_s": round(sent["sent"] / secs),
        **counts,
        "delivered_per_s": round(delivered / secs),
        "loss_pct": round(100.0 * (1 - delivered / sent["sent"]), 3) if sent["sent"] else 0.0,
        "datagram_bytes_avg": round(sent["bytes_avg"], 1),
        "cpu_seconds": round(cpu_used, 3),
        "cpu_us_per_datagram": round(cpu_used / max(1, counts["received"]) * 1e6, 2),
        "peak_rss_mb": {f"{monitor.labels.get(pid, pid)} [{pid}]": round(kb / 1024, 1) for pid, kb in sorted(monitor.peak_kb.items())},
    }
    if "landed_lines_on_disk" in counts and not (counts["landed_lines_on_disk"] == counts["landed_messages"] == counts["accepted"]):
        row["landing_mismatch"] = True
    row["zero_loss"] = row["loss_pct"] == 0 and not row.get("landing_mismatch") and sent["errors"] == 0
    return row


def udp_queue(port: int) -> tuple[int, int]:
    """Bytes queued on the UDP sockets bound to ``port`` and the datagrams they dropped (``/proc/net/udp``, ``udp6``)."""
    queued = drops = 0
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port:
                queued += int(fields[4].split(":")[1], 16)
                drops += int(fields[-1])
    return queued, drops


@contextlib.contextmanager
def receive_buffers_of(nbytes: int) -> Iterator[str | None]:
    """``net.core.rmem_max`` raised to ``nbytes`` while the block runs (root only); yields None, or why it could not be."""
    path = Path("/proc/sys/net/core/rmem_max")
    try:
        before = int(path.read_text())
    except OSError as exc:
        yield f"cannot read {path}: {exc.strerror}"
        return
    if before >= nbytes:
        yield None
        return
    try:
        path.write_text(str(nbytes))
    except OSError as exc:
        yield f"net.core.rmem_max is {before}; raising it to queue the whole burst needs root ({exc.strerror})"
        return
    try:
        yield None
    finally:
        path.write_text(str(before))


def capacity_one(subject, datagrams: int, sender_rate: int, progress) -> dict:
    """How fast ``subject`` takes a queued burst with the machine to itself: its receive capacity, msg/s.

    The receiver's processes are stopped (SIGSTOP), ``datagrams`` are sent into its socket queue (large enough for
    all of them), then it is let go (SIGCONT) and timed until its queue is empty.  No sender competes for the CPUs
    while it drains, so this is each receiver's own ceiling, the same measure for the bare loop and the collector.
    """
    import psutil

    port = free_port(socket.SOCK_DGRAM)
    pids = subject.start(port, rcvbuf=CAPACITY_RCVBUF)
    procs = [p for pid in pids for p in (psutil.Process(pid), *psutil.Process(pid).children(recursive=True))]
    for proc in procs:
        proc.suspend()
    try:
        rate = min(datagrams, 2 * sender_rate)
        sent = run_senders(port, rate, datagrams / rate, sender_rate, subject.kind, progress)
        queued_bytes, drops = udp_queue(port)
        cpu_before = sum(sum(p.cpu_times()[:2]) for p in procs)
        started = time.perf_counter()
        for proc in procs:
            proc.resume()
        while udp_queue(port)[0] > 0 and time.perf_counter() - started < 120:
            time.sleep(0.002)
        drain_s = time.perf_counter() - started
        cpu_s = sum(sum(p.cpu_times()[:2]) for p in procs) - cpu_before
    finally:
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.resume()
    subject.drain()
    counts = subject.stop()
    return {"sent": sent["sent"], "queued_bytes": queued_bytes, "dropped_while_queued": drops, **counts,
            "drain_s": round(drain_s, 3), "per_s": round(counts["accepted"] / drain_s),
            "cpu_us_per_datagram": round(cpu_s / max(1, counts["received"]) * 1e6, 2),
            "complete": drops == 0 and counts["accepted"] == sent["sent"]}


def capacity_figures(capacity: dict[str, dict]) -> dict:
    """The best bare and the best collector capacity (complete runs only) and their ratio."""
    complete = {name: c["per_s"] for name, c in capacity.items() if c["complete"]}

    def best(prefix: str) -> tuple[str | None, int]:
        return max(((n, v) for n, v in complete.items() if n.startswith(prefix)), key=lambda item: item[1], default=(None, 0))

    (raw_name, raw), (coll_name, coll) = best("bare"), best("collector")
    return {"capacity_per_s": complete, "raw_capacity": raw_name, "raw_capacity_per_s": raw, "collector_capacity": coll_name,
            "collector_capacity_per_s": coll, "collector_share_of_raw_capacity": round(coll / raw, 3) if raw and coll else None}


def summarize(runs: list[dict]) -> dict:
    clean = [r for r in runs if r["zero_loss"]]
    best = max(clean, key=lambda r: r["offered_per_s"], default=None)
    top = runs[-1] if runs else None
    return {
        "max_zero_loss_per_s": best["offered_per_s"] if best else 0,
        "max_zero_loss_target_per_s": best["target_per_s"] if best else 0,
        "max_delivered_per_s": max((r["delivered_per_s"] for r in runs), default=0),
        "lost_at_every_higher_rate": bool(best) and all(not r["zero_loss"] for r in runs if r["target_per_s"] > best["target_per_s"]),
        "no_loss_up_to_the_top_rate": bool(runs) and all(r["zero_loss"] for r in runs),
        "cpu_us_per_datagram_at_max": best["cpu_us_per_datagram"] if best else None,
        "peak_rss_mb_at_top_rate": top["peak_rss_mb"] if top else {},
        "top_rate_per_s": top["target_per_s"] if top else None,
    }


def chart(result: dict, path: Path) -> None:
    subjects = result["subjects"]
    m = result["machine"]
    title = (f"healthmon ingest, {m['cpus']} CPUs, loopback, ~{result['datagram_bytes']:.0f}-byte datagrams, "
             f"{result['seconds_per_run']:g} s per run, load average {m['loadavg_at_start'][0]:.1f} at start")
    with figure(path, title, 1, 3, figsize=(18, 5.5)) as (_plt, _fig, axes):
        ax = axes[0]
        top = max(result["rates"])
        ax.plot([0, top], [0, top], color="#bbbbbb", linestyle=":", label="offered = delivered")
        for s in subjects.values():
            runs = s["runs"]
            ax.plot([r["offered_per_s"] for r in runs], [r["delivered_per_s"] for r in runs], marker="o", label=s["label"])
            for r in runs:
                if not r["zero_loss"]:
                    ax.annotate(f"{r['loss_pct']:.1f}%", (r["offered_per_s"], r["delivered_per_s"]), fontsize=6, alpha=0.7,
                                textcoords="offset points", xytext=(2, -8))
        ax.axhline(TARGET_RATE, color="red", linestyle="--", label=f"target {TARGET_RATE:,}/s")
        ax.set_xlabel("offered msg/s (reached by the senders)")
        ax.set_ylabel("delivered msg/s (received; collector: accepted and landed)")
        ax.set_title("Throughput by offered rate (labels: loss)")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)

        ax = axes[1]
        names = list(subjects)
        f = result["figures"]
        capacity = result.get("capacity", {})
        width = 0.4 if capacity else 0.8
        xs = range(len(names))
        bars = ax.bar([x - width / 2 if capacity else x for x in xs], [subjects[n]["summary"]["max_zero_loss_per_s"] for n in names],
                      width, color="#4c72b0", label="sustained with zero loss (senders on the same cores)")
        for bar, name in zip(bars, names, strict=True):
            text = f"{bar.get_height():,.0f}" + ("+" if subjects[name]["summary"]["no_loss_up_to_the_top_rate"] else "")
            ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=7)
        if capacity:
            bars = ax.bar([x + width / 2 for x in xs], [capacity.get(n, {}).get("per_s", 0) for n in names], width, color="#8172b3",
                          label="capacity: a queued burst drained alone")
            for bar in bars:
                ax.annotate(f"{bar.get_height():,.0f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                            fontsize=7)
        ax.set_xticks(list(xs), names)
        ax.axhline(TARGET_RATE, color="red", linestyle="--", label=f"target {TARGET_RATE:,}/s")
        raw = f.get("raw_capacity_per_s") or f["raw_rate_per_s"]
        if raw:
            ax.axhline(raw * TARGET_RAW_SHARE, color="purple", linestyle=":", label=f"{TARGET_RAW_SHARE:.0%} of the raw rate")
        ax.set_title("msg/s per receiver (+: no loss up to the top rate)\n"
                     f"collector / raw = {f['collector_share_of_raw']} (target ≥ {TARGET_RAW_SHARE}), "
                     f"collector / best peer = {f['collector_over_best_peer']} (target > 1)", fontsize=9)
        ax.tick_params(axis="x", labelsize=8, rotation=15)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3, axis="y")

        ax = axes[2]
        labels, mbs = [], []
        for name, s in subjects.items():
            for proc, mb in s["summary"]["peak_rss_mb_at_top_rate"].items():
                labels.append(f"{name}: {proc}")
                mbs.append(mb)
        ax.barh(labels, mbs, color="#55a868")
        ax.axvline(TARGET_RSS_MB, color="red", linestyle="--", label=f"collector target {TARGET_RSS_MB:.0f} MB")
        ax.set_xlabel("peak RSS, MB (VmHWM) in the run at the top rate")
        ax.set_title("Memory of each process at the top rate")
        ax.tick_params(axis="y", labelsize=7)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3, axis="x")


def machine_and_rmem() -> dict:
    """``bench.common.machine()`` and ``net.core.rmem_max`` (the ceiling of every receive buffer here)."""
    info = machine()
    try:
        info["rmem_max"] = int(Path("/proc/sys/net/core/rmem_max").read_text())
    except OSError:
        pass
    return info


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default=",".join(map(str, DEFAULT_RATES)), help="offered rates, msg/s, comma-separated")
    parser.add_argument("--seconds", type=float, default=3.0, help="send time per rate and receiver")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 2, help="receiver processes of bare-N and collector-N")
    parser.add_argument("--sender-rate", type=int, default=SENDER_RATE, help="msg/s per sender process (more processes above)")
    parser.add_argument("--attempts", type=int, default=2, help="runs per rate and receiver at most, while it loses datagrams")
    parser.add_argument("--no-peer", action="store_true", help="skip statsd")
    parser.add_argument("--only", default="", help="comma-separated receivers to run (e.g. collector-2,statsd)")
    parser.add_argument("--capacity", type=int, default=CAPACITY_DATAGRAMS,
                        help="datagrams of each receiver's capacity run (a queued burst drained alone); 0: none")
    parser.add_argument("--baseline", default="", help="also run collector-1/N from the tree in this directory (e.g. "
                        "`git archive HEAD | tar -x -C DIR`), as collector-1-base/collector-N-base, each right after its twin")
    parser.add_argument("--from-json", default="", help="no runs: summarize and chart the runs of an earlier ingest.json")
    parser.add_argument("--role", choices=["send", "bare"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--kind", default="json", help=argparse.SUPPRESS)
    parser.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rcvbuf", type=int, default=RCVBUF, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "send":
        role_send(args.port, args.rate, args.seconds, args.kind)
        return 0
    if args.role == "bare":
        role_bare(args.port, args.reuse_port, args.rcvbuf)
        return 0

    at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if args.from_json:  # the summary, the verdicts and the chart again, from the runs of an earlier result
        earlier = json.loads(Path(args.from_json).read_text())
        results, info, rates, at = earlier["subjects"], earlier["machine"], earlier["rates"], earlier["at"]
        peer_note = earlier["figures"].get("peer_not_measured")
        capacity, capacity_note = earlier.get("capacity", {}), earlier["figures"].get("capacity_not_measured")
        args.seconds, args.attempts, args.sender_rate = earlier["seconds_per_run"], earlier["attempts"], earlier["sender_rate_per_process"]
    else:
        from tqdm import tqdm

        rates = [int(r) for r in args.rates.split(",")]
        n = args.processes
        subjects = [Bare(1), Bare(n), Collector(1), Collector(n)]
        if args.baseline:
            base = Path(args.baseline).resolve()
            subjects = [Bare(1), Bare(n), Collector(1), Collector(1, base, "-base"), Collector(n), Collector(n, base, "-base")]
        peer_note = None
        if not args.no_peer:
            statsd = Statsd()
            peer_note = statsd.install()
            if peer_note is None:
                subjects.append(statsd)
            else:
                print(f"WARNING: statsd not measured: {peer_note}")
        if args.only:
            subjects = [s for s in subjects if s.name in args.only.split(",")]
        info = machine_and_rmem()
        results: dict[str, dict] = {s.name: {"label": s.label, "processes": s.processes, "runs": []} for s in subjects}
        bar_format = "{l_bar}{bar}| {n:.0f}/{total:.0f} s of sending [{elapsed}<{remaining}]"
        with tqdm(total=len(subjects) * len(rates) * args.seconds, unit="s", desc="ingest bench", bar_format=bar_format,
                  mininterval=1.0) as bar:
            for rate in rates:
                for subject in subjects:
                    bar.set_postfix_str(f"{rate // 1000}k/s {subject.name}")
                    attempts = []
                    while len(attempts) < args.attempts and not any(a["zero_loss"] for a in attempts):
                        if attempts:
                            bar.total += args.seconds
                        attempts.append(bench_one(subject, rate, args.seconds, args.sender_rate, bar))
                    best = max(attempts, key=lambda a: (a["zero_loss"], a["delivered_per_s"]))
                    best["attempts"] = len(attempts)
                    best["other_attempts"] = [{k: a[k] for k in ("offered_per_s", "delivered_per_s", "loss_pct")}
                                              for a in attempts if a is not best]
                    results[subject.name]["runs"].append(best)
        capacity, capacity_note = {}, "--capacity 0"
        if args.capacity:
            with receive_buffers_of(CAPACITY_RCVBUF) as capacity_note:
                if capacity_note is None:
                    seconds = len(subjects) * args.capacity / min(args.capacity, 2 * args.sender_rate)
                    with tqdm(total=seconds, unit="s", desc="capacity runs", bar_format=bar_format, mininterval=1.0) as bar:
                        for subject in subjects:
                            bar.set_postfix_str(subject.name)
                            capacity[subject.name] = capacity_one(subject, args.capacity, args.sender_rate, bar)
            if capacity_note:
                print(f"WARNING: capacity not measured: {capacity_note}")
        info["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    for s in results.values():
        s["summary"] = summarize(s["runs"])

    def best(prefix: str) -> tuple[str | None, int]:
        named = [(name, s["summary"]["max_zero_loss_per_s"]) for name, s in results.items() if name.startswith(prefix)]
        return max(named, key=lambda item: item[1], default=(None, 0))

    raw_name, raw = best("bare")
    coll_name, coll = best("collector")
    # the offered rate of a step is what the senders reached: 99,999/s at the 100,000/s step takes that step
    coll_step = results[coll_name]["summary"]["max_zero_loss_target_per_s"] if coll_name else 0
    peers = {name: s["summary"]["max_zero_loss_per_s"] for name, s in results.items() if not name.startswith(("bare", "collector"))}
    best_peer = max(peers.values(), default=0)
    collector_rss = [mb for name, s in results.items() if name.startswith("collector")
                     for mb in s["summary"]["peak_rss_mb_at_top_rate"].values()]
    figures = {
        "raw_receiver": raw_name,
        "raw_rate_per_s": raw,
        "raw_rate_is_a_lower_bound": bool(raw_name and results[raw_name]["summary"]["no_loss_up_to_the_top_rate"]),
        "collector": coll_name,
        "collector_max_zero_loss_per_s": coll,
        "peers_max_zero_loss_per_s": peers,
        "collector_over_best_peer": round(coll / best_peer, 2) if best_peer else None,
        "collector_peak_rss_mb_max": max(collector_rss, default=None),
        "peer_not_measured": peer_note,
        "collector_share_of_raw_sustained": round(coll / raw, 3) if raw else None,
        **capacity_figures(capacity),
        "capacity_not_measured": capacity_note,
    }
    # the share of the raw rate: from the capacity runs when there are some (the sustained one is bounded by the
    # senders, who cannot offer a bare loop as much as it takes on these 2 cores)
    share = figures["collector_share_of_raw_capacity"] or figures["collector_share_of_raw_sustained"]
    figures["collector_share_of_raw"] = share
    targets = {
        "rate": {"target_per_s": TARGET_RATE, "value": coll, "step_per_s": coll_step,
                 "met": coll_step >= TARGET_RATE and coll >= 0.999 * coll_step},
        "share_of_raw": {"target": TARGET_RAW_SHARE, "value": share, "met": bool(share) and share >= TARGET_RAW_SHARE,
                         "measured_by": "capacity" if figures["collector_share_of_raw_capacity"] else "sustained"},
        "faster_than_every_peer": {"value": figures["collector_over_best_peer"], "met": bool(peers) and coll > best_peer},
        "collector_rss_mb": {"target_mb": TARGET_RSS_MB, "value": figures["collector_peak_rss_mb_max"],
                             "met": (figures["collector_peak_rss_mb_max"] or float("inf")) <= TARGET_RSS_MB},
    }
    bytes_avg = next(r["datagram_bytes_avg"] for s in results.values() for r in s["runs"])
    result = {"bench": "ingest", "at": at, "machine": info, "rates": rates,
              "seconds_per_run": args.seconds, "attempts": args.attempts, "sender_rate_per_process": args.sender_rate,
              "sockets_per_sender": SOCKETS_PER_SENDER,
              "datagram_bytes": bytes_avg, "subjects": results, "capacity": capacity, "figures": figures, "targets": targets}

    print()
    print(f"{info['cpus']} CPUs, Python {info['python']}, rmem_max {info.get('rmem_max')}, ~{bytes_avg:.0f}-byte datagrams, "
          f"{args.seconds:g} s per run, a sender process per {args.sender_rate:,} msg/s x {SOCKETS_PER_SENDER} sockets, load average "
          f"{info['loadavg_at_start'][0]:.2f} at start, {info['loadavg_at_end'][0]:.2f} at end")
    header = f"{'target/s':>9} " + " ".join(f"| {name:>22}" for name in results)
    print(header)
    print(f"{'':>9} " + " ".join(f"| {'offered  deliv.  loss%':>22}" for _ in results))
    print("-" * len(header))
    for i, rate in enumerate(rates):
        cells = []
        for s in results.values():
            r = s["runs"][i]
            cells.append(f"| {r['offered_per_s']:>7} {r['delivered_per_s']:>7} {r['loss_pct']:>6.2f}")
        print(f"{rate:>9} " + " ".join(cells))
    print()
    for name, s in results.items():
        sm = s["summary"]
        rss = ", ".join(f"{mb:.0f}" for mb in sm["peak_rss_mb_at_top_rate"].values())
        print(f"{name:>12}: zero loss up to {sm['max_zero_loss_per_s']:>7,}/s{'+' if sm['no_loss_up_to_the_top_rate'] else ' '} "
              f"(most delivered {sm['max_delivered_per_s']:,}/s), CPU {sm['cpu_us_per_datagram_at_max']} us/datagram, "
              f"peak RSS at the top rate {rss} MB")
    print()
    def verdict(key: str) -> str:
        return "met" if targets[key]["met"] else "MISSED"

    if capacity:
        print(f"capacity (a queued burst of {args.capacity:,} datagrams drained with the machine to itself):")
        for name, c in capacity.items():
            print(f"{name:>12}: {c['per_s']:>8,}/s in {c['drain_s']:.2f} s, CPU {c['cpu_us_per_datagram']} us/datagram"
                  + ("" if c["complete"] else f"  INCOMPLETE: {c['accepted']:,} of {c['sent']:,}, {c['dropped_while_queued']} dropped"))
        print()
    print(f"collector ({coll_name}) {coll:,}/s with zero loss: target {TARGET_RATE:,} -> {verdict('rate')}; "
          f"{share} of the raw rate ({targets['share_of_raw']['measured_by']}: " + (
              f"{figures['collector_capacity']} {figures['collector_capacity_per_s']:,}/s against {figures['raw_capacity']} "
              f"{figures['raw_capacity_per_s']:,}/s" if targets["share_of_raw"]["measured_by"] == "capacity" else
              f"{raw_name}, {raw:,}/s{', a lower bound: no loss up to the top rate' if figures['raw_rate_is_a_lower_bound'] else ''}")
          + f") -> "
          f"{verdict('share_of_raw')}; {figures['collector_over_best_peer']} x the best peer {peers} -> "
          f"{verdict('faster_than_every_peer')}; collector peak RSS {figures['collector_peak_rss_mb_max']} MB "
          f"(target {TARGET_RSS_MB:.0f}) -> {verdict('collector_rss_mb')}")
    for name, s in results.items():
        for r in s["runs"]:
            if r.get("landing_mismatch"):
                print(f"WARNING {name} at {r['target_per_s']}/s: accepted {r['accepted']} but landed {r['landed_messages']} "
                      f"({r['landed_lines_on_disk']} lines on disk)")
    write_results(result, RESULTS / "ingest.json", chart)
    print(f"results: {(RESULTS / 'ingest.json').relative_to(REPO)}, chart: {(RESULTS / 'ingest.png').relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
