"""The host agent: pure parts, the fallback order, real I/O on a loop device per source, and the CLI end to end."""

from __future__ import annotations

import json
import mmap
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.health import HostHealth, health_message, net_rates
from agent.latency import (
    DiskCounters,
    LatencySource,
    MeanLatency,
    bucket_bounds_ns,
    choose_source,
    diskstats_delta,
    flags_op,
    log2_midpoint_us,
    make_sources,
    parse_biolatency,
    parse_diskstats,
)
from agent.main import Agent, latency_message
from healthmon.schema import encode, parse_message
from healthmon.sketch import MAX_BUCKET, LatencySketch, bucket_of

ROOT = Path(__file__).resolve().parent.parent
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0

# ---------------------------------------------------------------- /proc/diskstats

DISKSTATS_1 = """\
 254       0 vda 1000 10 80000 500 2000 20 160000 3000 0 4000 3500 0 0 0 0 0 0
 254       1 vda1 900 10 70000 450 1900 20 150000 2900 0 3900 3350 0 0 0 0 0 0
   7       0 loop0 10 0 80 5 0 0 0 0 0 5 5 0 0 0 0 0 0
"""
DISKSTATS_2 = """\
 254       0 vda 1100 10 88000 520 2000 20 160000 3000 0 4000 3500 0 0 0 0 0 0
 254       1 vda1 950 10 74000 460 1950 20 154000 2950 0 3950 3400 0 0 0 0 0 0
   7       0 loop0 10 0 80 5 64 0 512 128 0 5 5 0 0 0 0 0 0
   7       1 loop1 5 0 40 1 0 0 0 0 0 1 1 0 0 0 0 0 0
"""


def test_parse_diskstats_fields():
    stats = parse_diskstats(DISKSTATS_1 + "garbage line\n")
    assert stats["vda"] == DiskCounters(reads=1000, read_ms=500, writes=2000, write_ms=3000)
    assert set(stats) == {"vda", "vda1", "loop0"}


def test_diskstats_delta_mean_only():
    delta = diskstats_delta(parse_diskstats(DISKSTATS_1), parse_diskstats(DISKSTATS_2))
    assert delta[("vda", "read")] == MeanLatency(count=100, sum_us=20_000.0)  # 20 ms over 100 reads: 200 µs mean
    assert delta[("vda", "read")].mean_us == 200.0
    assert ("vda", "write") not in delta  # no I/O: no entry
    assert delta[("loop0", "write")] == MeanLatency(64, 128_000.0)
    assert not any(dev == "loop1" for dev, _ in delta)  # appeared: no previous counters, skipped this once
    # counters that go backwards (device re-created) are skipped, never negative
    assert diskstats_delta(parse_diskstats(DISKSTATS_2), parse_diskstats(DISKSTATS_1)) == {}


def test_diskstats_message_is_valid():
    msg = latency_message("h1", "vda", "read", time.time(), 5.0, MeanLatency(100, 20_000.0), "diskstats")
    parsed = parse_message(encode(msg), time.time())
    assert parsed["mean_only"] is True and parsed["buckets"] == [] and parsed["source"] == "diskstats"
    assert parsed["count"] == 100 and parsed["sum_us"] == 20_000.0
    assert latency_message("h1", "vda", "read", time.time(), 5.0, MeanLatency(0, 0.0), "diskstats") is None


# ---------------------------------------------------------------- biolatency output

BIOLATENCY_OUT = """\
Tracing block device I/O... Hit Ctrl-C to end.

12:00:01

disk = vda\tflags = Sync-Write
     usecs               : count    distribution
         0 -> 1          : 0        |                                        |
         2 -> 3          : 0        |                                        |
        16 -> 31         : 147      |****************************************|
        32 -> 63         : 50       |*************                           |

disk = vda\tflags = PreFlush-Flush
     usecs               : count    distribution
       256 -> 511        : 1        |****************************************|

disk = loop0\tflags = Idle-Sync-Read
     usecs               : count    distribution
         0 -> 1          : 2        |                                        |
        16 -> 31         : 94       |****************************************|

12:00:02

disk = vda\tflags = Write
     usecs               : count    distribution
       256 -> 511        : 3        |****************************************|
"""


def test_flags_op():
    assert flags_op("Idle-Sync-Read") == "read"
    assert flags_op("ReadAhead-Read") == "read"
    assert flags_op("Priority-Metadata-Sync-Write") == "write"
    assert flags_op("Write") == "write"
    assert flags_op("PreFlush-Flush") is None
    assert flags_op("Sync-Discard") is None


def test_parse_biolatency_counts_and_midpoints():
    out = parse_biolatency(BIOLATENCY_OUT)
    assert set(out) == {("vda", "write"), ("loop0", "read")}
    vda = out[("vda", "write")]
    assert vda.count == 147 + 50 + 3  # every interval's rows add up (each print is a delta)
    expected = 147 * log2_midpoint_us(16, 31) + 50 * log2_midpoint_us(32, 63) + 3 * log2_midpoint_us(256, 511)
    assert vda.sum_us == pytest.approx(expected)
    assert vda.max_us == pytest.approx(log2_midpoint_us(256, 511))
    assert log2_midpoint_us(16, 31) == pytest.approx(16 * 2**0.5)
    assert out[("loop0", "read")].count == 96
    msg = latency_message("h1", "vda", "write", time.time(), 5.0, vda, "libbpf")
    parsed = parse_message(encode(msg), time.time())
    assert parsed["count"] == 200 and sum(c for _, c in parsed["buckets"]) == 200


def test_bcc_bounds_match_sketch_buckets():
    """The kernel's bucket search uses these bounds: v_ns <= bounds[i] exactly when bucket_of(v_ns/1000) <= i."""
    bounds = bucket_bounds_ns()
    assert len(bounds) == MAX_BUCKET + 1 and bounds[0] == 1000

    def kernel_bucket(v_ns: int) -> int:  # the BPF program's binary search, in Python
        lo, hi = 0, MAX_BUCKET
        while lo < hi:
            mid = (lo + hi) // 2
            if v_ns <= bounds[mid]:
                hi = mid
            else:
                lo = mid + 1
        return lo

    for v_ns in [1, 999, 1000, 1001, 1041, 20_000, 35_123, 1_000_000, 123_456_789, 10**12]:
        assert kernel_bucket(v_ns) == bucket_of(v_ns / 1000.0), v_ns
    for b in range(1, MAX_BUCKET, 37):  # both sides of a boundary
        assert kernel_bucket(bounds[b]) == bucket_of(bounds[b] / 1000.0)
        assert kernel_bucket(bounds[b] + 1) == bucket_of((bounds[b] + 1) / 1000.0)


def test_sketch_message_is_valid():
    sketch = LatencySketch()
    for v in (20.0, 25.0, 30.0, 400.0):
        sketch.add(v)
    parsed = parse_message(encode(latency_message("h1", "loop0", "write", time.time(), 1.0, sketch, "bcc")), time.time())
    assert parsed["count"] == 4 and parsed["max_us"] == 400.0 and parsed["sum_us"] == 475.0
    assert "mean_only" not in parsed


# ---------------------------------------------------------------- host health


def test_net_rates_bits_per_second():
    rates = net_rates({"eth0": (1000, 2000), "lo": (5, 5)}, {"eth0": (3000, 2500), "lo": (1, 1), "new0": (9, 9)}, 2.0)
    assert rates == {"eth0": {"rx_bps": 8000.0, "tx_bps": 2000.0}}  # lo went backwards, new0 has no previous
    assert net_rates({"a": (0, 0)}, {"a": (1, 1)}, 0.0) == {}


def test_health_message_valid_and_clamped():
    msg = health_message("my host!", time.time(), 100.4, 16 * 10**9, 17 * 10**9, 100 * 10**9, 40 * 10**9,
                         {"eth0": {"rx_bps": 1.0, "tx_bps": 2.0}})
    parsed = parse_message(encode(msg), time.time())
    assert parsed["type"] == "health" and parsed["service"] == "host:my-host-"
    assert parsed["cpu_pct"] == 100.0 and parsed["ram_free_gb"] == parsed["ram_total_gb"] == 16.0
    assert parsed["disk_free_gb"] == 40.0 and parsed["net"]["eth0"]["tx_bps"] == 2.0


def test_host_health_sample_is_valid():
    health = HostHealth()
    time.sleep(0.1)
    parsed = parse_message(encode(health.sample()), time.time())
    assert parsed["service"] == f"host:{health.host}" and parsed["ram_total_gb"] > 0 and parsed["disk_total_gb"] > 0
    assert parsed["net"]  # every interface with counters, rates from the previous sample


# ---------------------------------------------------------------- the fallback order


class FakeSource(LatencySource):
    def __init__(self, name: str, ok: bool, reason: str, start_error: str | None = None) -> None:
        super().__init__()
        self.name, self.ok, self.reason, self.start_error = name, ok, reason, start_error
        self.started = self.stopped = False

    def available(self):
        return self.ok, self.reason

    def start(self):
        if self.start_error:
            raise RuntimeError(self.start_error)
        self.started = True

    def collect(self):
        sketch = LatencySketch()
        sketch.add(100.0, 3)
        return {("vdz", "read"): sketch}

    def stop(self):
        self.stopped = True


def test_fallback_picks_first_usable_and_says_why():
    bcc = FakeSource("bcc", False, "no kernel headers")
    libbpf = FakeSource("libbpf", True, "ok", start_error="biolatency did not start: permission denied")
    disk = FakeSource("diskstats", True, "mean only")
    late = FakeSource("later", True, "fine")
    chosen, reasons = choose_source([bcc, libbpf, disk, late])
    assert chosen is disk and disk.started and not late.started
    assert reasons["bcc"] == "not usable: no kernel headers"
    assert reasons["libbpf"] == "not usable: biolatency did not start: permission denied" and libbpf.stopped
    assert reasons["diskstats"].startswith("used: mean only")
    assert reasons["later"] == "not tried: diskstats is used"


def test_fallback_none_usable():
    chosen, reasons = choose_source([FakeSource("bcc", False, "no root"), FakeSource("diskstats", False, "no /proc")])
    assert chosen is None and set(reasons) == {"bcc", "diskstats"}


def test_make_sources_order():
    assert [s.name for s in make_sources("auto")] == ["bcc", "libbpf", "diskstats"]
    assert [s.name for s in make_sources("diskstats", {"vda"})] == ["diskstats"]


def test_unprivileged_tracing_reports_a_reason(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    for source in make_sources("auto")[:2]:
        ok, reason = source.available()
        assert not ok and ("root" in reason or "not found" in reason)


class ListSender:
    def __init__(self) -> None:
        self.datagrams: list[bytes] = []

    def send(self, datagram: bytes) -> None:
        self.datagrams.append(datagram)


def test_agent_tick_sends_valid_messages():
    sender = ListSender()
    agent = Agent(sender, FakeSource("bcc", True, "ok"), HostHealth(host="testhost"))
    agent.tick()
    parsed = [parse_message(d, time.time()) for d in sender.datagrams]
    assert [m["type"] for m in parsed] == ["health", "disk_latency"]
    assert parsed[1]["device"] == "vdz" and parsed[1]["count"] == 3 and parsed[1]["host"] == "testhost"


# ---------------------------------------------------------------- real I/O on a loop device (root)

N_WRITES = 64
N_READS = 48
BLOCK = 4096
TOLERANCE = 2  # requests beyond the issued ones that a source may also see (none were seen here)


def _direct_io(dev: str, writes: int, reads: int) -> None:
    """``writes`` then ``reads`` synchronous 4 KiB O_DIRECT requests at distinct offsets (no merging, no cache)."""
    buf = mmap.mmap(-1, BLOCK)  # page-aligned, as O_DIRECT needs
    buf.write(b"x" * BLOCK)
    fd = os.open(dev, os.O_RDWR | os.O_DIRECT)
    try:
        for i in range(writes):
            assert os.pwritev(fd, [buf], i * 2 * BLOCK) == BLOCK
        for i in range(reads):
            assert os.preadv(fd, [buf], i * 2 * BLOCK + BLOCK * 256) == BLOCK
    finally:
        os.close(fd)


def measure_child(source: str, dev: str) -> None:
    """Run in a child process: start the source, make the I/O, print {op: count} for ``dev`` as JSON."""
    import logging

    logging.basicConfig(level=logging.INFO)
    devname = os.path.basename(dev)
    chosen, reasons = choose_source(make_sources(source, {devname}, work_dir=str(ROOT / "var" / "bcc")))
    if chosen is None:
        print(json.dumps({"unavailable": reasons}))
        return
    try:
        time.sleep(0.5)
        chosen.collect()  # drop whatever happened before the test's I/O (losetup's partition scan)
        _direct_io(dev, N_WRITES, N_READS)
        time.sleep(1.6)  # biolatency prints every second
        totals: dict[str, int] = {}
        for _ in range(2):
            for (device, op), value in chosen.collect().items():
                if device == devname:
                    totals[op] = totals.get(op, 0) + value.count
            time.sleep(1.1)
        print(json.dumps({"source": chosen.name, "counts": totals, "reasons": reasons}))
    finally:
        chosen.stop()


@pytest.fixture
def loop_device(tmp_path):
    if not IS_ROOT:
        pytest.skip("needs root: losetup and block tracing")
    if not shutil.which("losetup"):
        pytest.skip("losetup not found (util-linux)")
    backing = tmp_path / "disk.img"
    with open(backing, "wb") as f:
        f.truncate(16 * 1024 * 1024)
    dev = subprocess.run(["losetup", "--find", "--show", str(backing)], capture_output=True, text=True, check=True).stdout.strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


@pytest.mark.slow
@pytest.mark.agent
@pytest.mark.parametrize("source", ["auto", "bcc", "libbpf", "diskstats"])
def test_real_io_counts_on_loop_device(loop_device, source):
    code = f"from tests.test_agent import measure_child; measure_child({source!r}, {loop_device!r})"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if "unavailable" in result:
        pytest.skip(f"{source} not usable here: {result['unavailable']}")
    counts = result["counts"]
    print(f"{source} ({result['source']}): issued {N_WRITES} writes, {N_READS} reads; measured {counts}")
    assert N_WRITES <= counts.get("write", 0) <= N_WRITES + TOLERANCE, (counts, proc.stderr[-1500:])
    assert N_READS <= counts.get("read", 0) <= N_READS + TOLERANCE, (counts, proc.stderr[-1500:])
    if source == "auto":
        assert result["source"] == next(n for n, r in result["reasons"].items() if r.startswith("used"))


# ---------------------------------------------------------------- the command, end to end


@pytest.mark.slow
def test_cli_agent_sends_valid_datagrams(tmp_path):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    port = sock.getsockname()[1]
    exe = ROOT / ".venv" / "bin" / "healthmon"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "healthmon.cli"]
    log_path = tmp_path / "agent.log"
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen([*cmd, "agent", "--interval", "1", "--target", f"127.0.0.1:{port}", "--data-dir", str(ROOT / "var")],
                                cwd=ROOT, stderr=log_file, stdout=log_file)
    messages: list[dict] = []
    try:
        deadline = time.time() + 60  # BCC compiles its program first (a few seconds)
        ready_at = None
        while time.time() < deadline:
            if ready_at is None and "sending every" in log_path.read_text():
                ready_at = time.time()
            if ready_at is not None:
                with open(tmp_path / "io.bin", "ab") as f:  # a write the agent must see on this host's disk
                    f.write(os.urandom(8192))
                    f.flush()
                    os.fsync(f.fileno())
                if time.time() - ready_at > 3.5:
                    break
            try:
                data, _ = sock.recvfrom(65536)
            except TimeoutError:
                continue
            messages.append(parse_message(data, time.time()))  # raises on an invalid datagram
        assert ready_at is not None, log_path.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=20)
        sock.close()
    log_text = log_path.read_text()
    assert rc == 0, log_text
    types = [m["type"] for m in messages]
    assert types.count("health") >= 2, (types, log_text)
    (info,) = [m for m in messages if m["type"] == "host_info"]  # sent at start (and hourly)
    assert info["cpu_count"] == os.cpu_count() and info["kernel"] == os.uname().release
    latency = [m for m in messages if m["type"] == "disk_latency"]
    assert latency and all(m["count"] > 0 and m["op"] in ("read", "write") for m in latency), log_text
    assert "using latency source" in log_text and "stopped; sent" in log_text
