"""Block latency sources behind one small interface, tried in order.

Each source measures, per block device and op (``read``/``write``), the
latencies of the I/Os completed since its last ``collect()``:

1. ``BccSource``: BCC (Debian's ``python3-bpfcc``) with
   ``TRACEPOINT_PROBE(block, block_rq_issue)`` / ``block_rq_complete``.  The
   kernel program puts every latency straight into the bucket of
   ``healthmon.sketch`` (a binary search over the fixed bucket boundaries in
   nanoseconds), so its sketches are exact.  Needs root, kernel headers
   (``BCC_KERNEL_SOURCE``: Debian's ``linux-headers-*-common`` and
   ``-amd64`` trees merged into one directory) and tracefs, which it mounts in
   a private mount namespace of the agent process (the host's mounts are not
   changed).
2. ``BiolatencySource``: CO-RE BPF through libbpf, as Debian's
   ``libbpf-tools`` ``biolatency -D -F -T 1`` run as one long-lived
   subprocess (root and ``/sys/kernel/btf/vmlinux`` only).  It prints a
   power-of-two histogram per disk and flag set every second and clears it;
   each log2 bucket ``[lo, 2*lo)`` µs is added to the sketch at its geometric
   midpoint ``lo*sqrt(2)``, so a latency read from it is within a factor of
   sqrt(2) (-29%/+41%) of the truth, not 2%.  Counts are exact.
3. ``DiskstatsSource``: ``/proc/diskstats`` deltas: the number of completed
   I/Os and the time spent on them (ms), so the mean latency only
   (``mean_only``); no tracing, no privileges.

``collect()`` returns ``{(device, op): LatencySketch | MeanLatency}``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass

from healthmon.sketch import GAMMA, MAX_BUCKET, LatencySketch

log = logging.getLogger(__name__)

OPS = ("read", "write")
DISKSTATS = "/proc/diskstats"
BTF_VMLINUX = "/sys/kernel/btf/vmlinux"
DIST_PACKAGES = "/usr/lib/python3/dist-packages"


@dataclass
class MeanLatency:
    """What ``/proc/diskstats`` knows about one interval: completed I/Os and their total time."""

    count: int
    sum_us: float

    @property
    def mean_us(self) -> float:
        return self.sum_us / self.count if self.count else 0.0


class SourceUnavailable(RuntimeError):
    """A source cannot run here; the message says why."""


class LatencySource(ABC):
    """One way of measuring block latency.  ``available()`` is cheap; ``start()`` may still fail."""

    name = "base"
    mean_only = False

    def __init__(self, devices: set[str] | None = None) -> None:
        self.devices = devices  # None: every device

    def wanted(self, device: str) -> bool:
        return self.devices is None or device in self.devices

    @abstractmethod
    def available(self) -> tuple[bool, str]:
        """(usable here?, why / what it measures)."""

    def start(self) -> None:  # noqa: B027 - an optional hook: sources that need no set-up keep it
        """Start measuring; raise SourceUnavailable with the reason when it cannot."""

    @abstractmethod
    def collect(self) -> dict[tuple[str, str], LatencySketch | MeanLatency]:
        """What was measured since the last call, by (device, op)."""

    def stop(self) -> None:  # noqa: B027 - an optional hook, like start()
        """Release what start() took; safe to call more than once."""


# ---------------------------------------------------------------- devices


def block_devices() -> dict[tuple[int, int], str]:
    """(major, minor) -> name of every block device (disks and partitions), from sysfs."""
    out: dict[tuple[int, int], str] = {}
    for path in glob.glob("/sys/class/block/*/dev"):
        try:
            with open(path) as f:
                major, minor = f.read().strip().split(":")
        except (OSError, ValueError):
            continue
        out[(int(major), int(minor))] = os.path.basename(os.path.dirname(path))
    return out


def whole_disks() -> set[str]:
    """Names under /sys/block: whole disks, not partitions."""
    try:
        return set(os.listdir("/sys/block"))
    except OSError:
        return set()


# ---------------------------------------------------------------- /proc/diskstats


@dataclass(frozen=True)
class DiskCounters:
    reads: int
    read_ms: int
    writes: int
    write_ms: int


def parse_diskstats(text: str) -> dict[str, DiskCounters]:
    """Per device: completed reads/writes and ms spent on them (fields 4, 7, 8, 11 of /proc/diskstats)."""
    out: dict[str, DiskCounters] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 11:
            continue
        try:
            out[parts[2]] = DiskCounters(int(parts[3]), int(parts[6]), int(parts[7]), int(parts[10]))
        except ValueError:
            continue
    return out


def diskstats_delta(before: dict[str, DiskCounters], after: dict[str, DiskCounters]) -> dict[tuple[str, str], MeanLatency]:
    """Per (device, op) with I/O in between: completed I/Os and their time (µs).

    A device that appeared, or whose counters went backwards (re-created), is skipped this once.
    """
    out: dict[tuple[str, str], MeanLatency] = {}
    for dev, now in after.items():
        prev = before.get(dev)
        if prev is None:
            continue
        for op, n, ms, n0, ms0 in (("read", now.reads, now.read_ms, prev.reads, prev.read_ms),
                                   ("write", now.writes, now.write_ms, prev.writes, prev.write_ms)):
            count, ticks = n - n0, ms - ms0
            if count > 0 and ticks >= 0:
                out[(dev, op)] = MeanLatency(count, ticks * 1000.0)
    return out


class DiskstatsSource(LatencySource):
    name = "diskstats"
    mean_only = True

    def __init__(self, devices: set[str] | None = None, path: str = DISKSTATS) -> None:
        super().__init__(devices)
        self.path = path
        self.previous: dict[str, DiskCounters] = {}

    def _read(self) -> dict[str, DiskCounters]:
        with open(self.path) as f:
            stats = parse_diskstats(f.read())
        disks = whole_disks()
        return {d: c for d, c in stats.items() if (not disks or d in disks) and self.wanted(d)}

    def available(self) -> tuple[bool, str]:
        if not os.access(self.path, os.R_OK):
            return False, f"{self.path} is not readable"
        return True, "mean latency per op from completed I/Os and their time (no distribution)"

    def start(self) -> None:
        self.previous = self._read()

    def collect(self) -> dict[tuple[str, str], MeanLatency]:
        now = self._read()
        out = diskstats_delta(self.previous, now)
        self.previous = now
        return out


# ---------------------------------------------------------------- libbpf-tools biolatency

_BL_HEADER = re.compile(r"^disk = (\S+)\s+flags = (\S*)")
_BL_ROW = re.compile(r"^\s*(\d+)\s*->\s*(\d+)\s*:\s*(\d+)")


def flags_op(flags: str) -> str | None:
    """The op of a biolatency -F flag set ('Idle-Sync-Read' -> read); None for flush, discard, ..."""
    last = flags.rsplit("-", 1)[-1]
    return {"Read": "read", "Write": "write"}.get(last)


def log2_midpoint_us(lo: int, hi: int) -> float:
    """The geometric midpoint of a biolatency bucket 'lo -> hi' (µs values in [lo, hi+1))."""
    return math.sqrt(max(lo, 1) * (hi + 1)) if lo > 0 else 1.0


class BiolatencyParser:
    """Turns ``biolatency -D -F`` output lines into per (device, op) sketches (each row is a delta)."""

    def __init__(self) -> None:
        self.key: tuple[str, str | None] | None = None
        self.pending: dict[tuple[str, str], LatencySketch] = {}
        self.other_ops = 0  # flushes, discards, ...: not read or write

    def feed(self, line: str) -> None:
        m = _BL_HEADER.match(line.strip())
        if m:
            self.key = (m.group(1), flags_op(m.group(2)))
            return
        m = _BL_ROW.match(line)
        if m and self.key is not None:
            count = int(m.group(3))
            if count == 0:
                return
            device, op = self.key
            if op is None:
                self.other_ops += count
                return
            sketch = self.pending.setdefault((device, op), LatencySketch())
            sketch.add(log2_midpoint_us(int(m.group(1)), int(m.group(2))), count)
            return
        if not line.strip():
            return
        if not m and not line.lstrip().startswith("usecs"):
            self.key = None  # timestamp or anything else ends a histogram

    def take(self) -> dict[tuple[str, str], LatencySketch]:
        out, self.pending = self.pending, {}
        return out


def parse_biolatency(text: str) -> dict[tuple[str, str], LatencySketch]:
    parser = BiolatencyParser()
    for line in text.splitlines():
        parser.feed(line)
    return parser.take()


class BiolatencySource(LatencySource):
    name = "libbpf"
    PERIOD_S = 1  # biolatency prints (and clears) its histograms this often
    START_TIMEOUT_S = 15.0

    def __init__(self, devices: set[str] | None = None, binary: str | None = None) -> None:
        super().__init__(devices)
        self.binary = binary or shutil.which("biolatency") or shutil.which("biolatency", path="/usr/sbin:/sbin")
        self.proc: subprocess.Popen | None = None
        self.parser = BiolatencyParser()
        self.lock = threading.Lock()
        self.reader: threading.Thread | None = None
        self.stderr_tail: list[str] = []
        self.started = threading.Event()

    def available(self) -> tuple[bool, str]:
        if not self.binary:
            return False, "biolatency not found (Debian package libbpf-tools)"
        if os.geteuid() != 0:
            return False, "loading BPF programs needs root (CAP_BPF and CAP_PERFMON)"
        if not os.path.exists(BTF_VMLINUX):
            return False, f"{BTF_VMLINUX} missing: the kernel has no BTF for CO-RE"
        return True, f"{self.binary} -D -F (CO-RE, tp_btf block_rq_issue/complete; log2 buckets, counts exact)"

    def start(self) -> None:
        # stdbuf: biolatency's stdout is a pipe, which C buffers by blocks; line buffering delivers each print at once.
        cmd = [self.binary, "-D", "-F", "-T", str(self.PERIOD_S)]
        stdbuf = shutil.which("stdbuf")
        if stdbuf:
            cmd = [stdbuf, "-oL", *cmd]
        self.started.clear()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
                                     start_new_session=True)
        self.reader = threading.Thread(target=self._read_loop, name="biolatency-out", daemon=True)
        self.reader.start()
        threading.Thread(target=self._read_stderr, name="biolatency-err", daemon=True).start()
        # "Tracing block device I/O..." is printed once the program is loaded and attached.
        if not self.started.wait(self.START_TIMEOUT_S):
            proc = self.proc
            self.stop()
            code = proc.returncode if proc is not None else None
            detail = " | ".join(self.stderr_tail[-3:]) or "no output"
            raise SourceUnavailable(f"biolatency did not start (exit {code}): {detail[:300]}")

    def _read_loop(self) -> None:
        proc = self.proc
        assert proc is not None and proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("Tracing"):
                self.started.set()
                continue
            with self.lock:
                self.parser.feed(line)

    def _read_stderr(self) -> None:
        proc = self.proc
        assert proc is not None and proc.stderr is not None
        for line in proc.stderr:
            self.stderr_tail = [*self.stderr_tail[-9:], line.strip()]

    def collect(self) -> dict[tuple[str, str], LatencySketch]:
        if self.proc is not None and self.proc.poll() is not None:
            log.warning("biolatency exited with %s", self.proc.returncode)
        with self.lock:
            out = self.parser.take()
        return {k: v for k, v in out.items() if self.wanted(k[0])}

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.reader is not None:
            self.reader.join(timeout=2)


# ---------------------------------------------------------------- BCC

# Sketch bucket i holds latencies v (µs) with GAMMA**(i-1) < v <= GAMMA**i; in integer nanoseconds
# that is exactly v_ns <= floor(1000 * GAMMA**i), so the kernel finds the bucket by binary search.
BCC_PROGRAM = r"""
#include <uapi/linux/ptrace.h>

struct rq_key { u64 dev; u64 sector; };
struct rq_val { u64 ts; u32 op; };
struct hist_key { u32 dev; u32 op; u32 bucket; u32 pad; };
struct stat_key { u32 dev; u32 op; };
struct stat_val { u64 count; u64 sum_ns; };

BPF_HASH(start, struct rq_key, struct rq_val, 65536);
BPF_HASH(hist, struct hist_key, u64, 65536);
BPF_HASH(stats, struct stat_key, struct stat_val, 4096);
BPF_HASH(maxes, struct stat_key, u64, 4096);
BPF_ARRAY(bounds, u64, NBOUNDS);

static __always_inline int op_of(char *rwbs) {
    char c0 = rwbs[0], c1 = rwbs[1];
    if (c0 == 'R') return 1;
    if (c0 == 'W') return 2;
    if (c0 == 'F' && c1 == 'W') return 2;   /* preflush + write */
    return 0;
}

TRACEPOINT_PROBE(block, block_rq_issue) {
    int op = op_of(args->rwbs);
    if (op == 0) return 0;
    struct rq_key key = {.dev = args->dev, .sector = args->sector};
    struct rq_val val = {.ts = bpf_ktime_get_ns(), .op = op};
    start.update(&key, &val);
    return 0;
}

TRACEPOINT_PROBE(block, block_rq_complete) {
    struct rq_key key = {.dev = args->dev, .sector = args->sector};
    struct rq_val *val = start.lookup(&key);
    if (val == 0) return 0;
    u64 delta = bpf_ktime_get_ns() - val->ts;
    u32 op = val->op;
    start.delete(&key);

    u32 lo = 0, hi = MAXBUCKET;
    #pragma unroll
    for (int i = 0; i < SEARCH_STEPS; i++) {
        if (lo < hi) {
            u32 mid = (lo + hi) / 2;
            u64 *b = bounds.lookup(&mid);
            if (b != 0 && delta <= *b) hi = mid; else lo = mid + 1;
        }
    }
    struct hist_key hk = {.dev = args->dev, .op = op, .bucket = lo};
    hist.atomic_increment(hk);

    struct stat_key sk = {.dev = args->dev, .op = op};
    struct stat_val zero = {};
    struct stat_val *s = stats.lookup_or_try_init(&sk, &zero);
    if (s) {
        __sync_fetch_and_add(&s->count, 1);
        __sync_fetch_and_add(&s->sum_ns, delta);
    }
    u64 *m = maxes.lookup(&sk);
    if (m == 0) maxes.update(&sk, &delta);
    else if (delta > *m) *m = delta;
    return 0;
}
"""

CLONE_NEWNS = 0x00020000
MS_REC = 16384
MS_PRIVATE = 1 << 18
TRACEFS = "/sys/kernel/tracing"


def bucket_bounds_ns() -> list[int]:
    """floor(1000 * GAMMA**i) for every sketch bucket: the largest latency (ns) in bucket i."""
    return [math.floor(1000.0 * GAMMA**i) for i in range(MAX_BUCKET + 1)]


def _overlay(src: str, dest: str) -> None:
    """Copy tree ``src`` over ``dest``: files hard-linked (copied across file systems), symlinks made absolute."""
    for root, dirs, files in os.walk(src):
        rel = os.path.relpath(root, src)
        out_dir = os.path.normpath(os.path.join(dest, rel))
        os.makedirs(out_dir, exist_ok=True)
        for name in dirs + files:
            path = os.path.join(root, name)
            out = os.path.join(out_dir, name)
            if os.path.islink(path):
                if os.path.islink(out) or os.path.isfile(out):
                    os.unlink(out)
                elif os.path.isdir(out):
                    shutil.rmtree(out)
                os.symlink(os.path.realpath(path), out)
            elif name in files:
                if os.path.lexists(out):
                    os.unlink(out)
                try:
                    os.link(path, out)
                except OSError:
                    shutil.copy2(path, out)


def merged_kernel_source(dest: str) -> tuple[str | None, str]:
    """A directory with Debian's linux-headers -common and -amd64 trees merged, for BCC_KERNEL_SOURCE.

    Returns (path, what was used) or (None, why not).
    """
    arch_trees = sorted(d for d in glob.glob("/usr/src/linux-headers-*") if not d.endswith("-common") and os.path.isdir(d))
    for arch in reversed(arch_trees):
        version = os.path.basename(arch)[len("linux-headers-"):]
        flavour = version.rsplit("-", 1)[0]  # 6.1.0-56-amd64 -> 6.1.0-56
        common = f"/usr/src/linux-headers-{flavour}-common"
        if not os.path.isdir(common):
            continue
        target = os.path.join(dest, f"linux-headers-{version}-merged")
        stamp = os.path.join(target, ".merged")
        if not os.path.exists(stamp):
            tmp = target + ".tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            # common first, then the arch tree on top (its generated headers and .config win)
            _overlay(common, tmp)
            _overlay(arch, tmp)
            open(os.path.join(tmp, ".merged"), "w").close()
            shutil.rmtree(target, ignore_errors=True)
            os.replace(tmp, target)
        return target, f"{common} + {arch}"
    return None, "no kernel headers (Debian package linux-headers-amd64: /usr/src/linux-headers-*-{common,amd64})"


def tracefs_mounted() -> bool:
    return os.path.isdir(os.path.join(TRACEFS, "events"))


def mount_tracefs_privately() -> None:
    """Mount tracefs in a private mount namespace of this process: the host's mounts stay as they are."""
    if tracefs_mounted():
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.unshare(CLONE_NEWNS) != 0:
        raise SourceUnavailable(f"unshare(CLONE_NEWNS): {os.strerror(ctypes.get_errno())}")
    if libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        raise SourceUnavailable(f"making / private: {os.strerror(ctypes.get_errno())}")
    if libc.mount(b"tracefs", TRACEFS.encode(), b"tracefs", 0, None) != 0:
        raise SourceUnavailable(f"mount tracefs: {os.strerror(ctypes.get_errno())}")


def import_bcc():
    """Debian's python3-bpfcc, imported with the system dist-packages on sys.path for this import only."""
    if "bcc" in sys.modules:
        return sys.modules["bcc"]
    added = DIST_PACKAGES not in sys.path
    if added:
        sys.path.append(DIST_PACKAGES)
    try:
        import bcc  # noqa: PLC0415

        return bcc
    finally:
        if added:
            sys.path.remove(DIST_PACKAGES)


class BccSource(LatencySource):
    name = "bcc"

    def __init__(self, devices: set[str] | None = None, work_dir: str = "/var/tmp/healthmon-bcc") -> None:
        super().__init__(devices)
        self.work_dir = work_dir
        self.bpf = None
        self.prev_hist: dict[tuple[int, int, int], int] = {}
        self.prev_stats: dict[tuple[int, int], tuple[int, int]] = {}
        self.names: dict[tuple[int, int], str] = {}

    def available(self) -> tuple[bool, str]:
        if os.geteuid() != 0:
            return False, "loading BPF programs needs root"
        try:
            import_bcc()
        except Exception as exc:  # ImportError, or libbcc missing / wrong Python
            return False, f"cannot import bcc (Debian package python3-bpfcc): {exc}"
        if not glob.glob("/usr/src/linux-headers-*-common") and not os.path.isdir(f"/lib/modules/{os.uname().release}/build"):
            return False, "no kernel headers (Debian package linux-headers-amd64)"
        return True, "BCC tracepoints block_rq_issue/complete, exact sketch buckets computed in the kernel"

    def start(self) -> None:
        if "BCC_KERNEL_SOURCE" not in os.environ and not os.path.isdir(f"/lib/modules/{os.uname().release}/build"):
            os.makedirs(self.work_dir, exist_ok=True)
            path, what = merged_kernel_source(self.work_dir)
            if path is None:
                raise SourceUnavailable(what)
            os.environ["BCC_KERNEL_SOURCE"] = path
            log.info("bcc: BCC_KERNEL_SOURCE=%s (%s)", path, what)
        mount_tracefs_privately()
        bcc = import_bcc()
        bounds = bucket_bounds_ns()
        steps = max(1, math.ceil(math.log2(len(bounds))) + 1)
        cflags = [f"-DNBOUNDS={len(bounds)}", f"-DMAXBUCKET={MAX_BUCKET}", f"-DSEARCH_STEPS={steps}", "-w"]
        try:
            bpf = bcc.BPF(text=BCC_PROGRAM, cflags=cflags)
        except Exception as exc:
            raise SourceUnavailable(f"BCC could not compile or load the program: {str(exc).strip()[:300]}") from None
        table = bpf["bounds"]
        for i, b in enumerate(bounds):
            table[ctypes.c_int(i)] = ctypes.c_uint64(b)
        self.bpf = bpf
        self.prev_hist, self.prev_stats = self._read()

    def _read(self):
        assert self.bpf is not None
        hist = {(k.dev, k.op, k.bucket): v.value for k, v in self.bpf["hist"].items()}
        stats = {(k.dev, k.op): (v.count, v.sum_ns) for k, v in self.bpf["stats"].items()}
        return hist, stats

    def _name(self, dev: int) -> str:
        key = (dev >> 20, dev & 0xFFFFF)  # the kernel's dev_t: MAJOR << 20 | MINOR
        if key not in self.names:
            self.names = block_devices()
        return self.names.get(key, f"dev{key[0]}-{key[1]}")

    def collect(self) -> dict[tuple[str, str], LatencySketch]:
        if self.bpf is None:
            return {}
        hist, stats = self._read()
        maxes = {}
        table = self.bpf["maxes"]
        for k, v in list(table.items()):
            maxes[(k.dev, k.op)] = v.value
            try:
                del table[k]
            except KeyError:
                pass
        out: dict[tuple[str, str], LatencySketch] = {}
        for (dev, op, bucket), total in hist.items():
            delta = total - self.prev_hist.get((dev, op, bucket), 0)
            if delta <= 0:
                continue
            name = self._name(dev)
            if not self.wanted(name):
                continue
            sketch = out.setdefault((name, OPS[op - 1]), LatencySketch())
            sketch.buckets[bucket] = sketch.buckets.get(bucket, 0) + delta
        for (dev, op), (_count, sum_ns) in stats.items():
            sketch = out.get((self._name(dev), OPS[op - 1]))
            if sketch is None:
                continue
            c0, s0 = self.prev_stats.get((dev, op), (0, 0))
            sketch.sum_us = (sum_ns - s0) / 1000.0
            sketch.max_us = min(maxes.get((dev, op), 0) / 1000.0, sketch.sum_us)
        for sketch in out.values():
            # the buckets are the truth for count (hist and stats are read a moment apart)
            sketch.count = sum(sketch.buckets.values())
        self.prev_hist, self.prev_stats = hist, stats
        return out

    def stop(self) -> None:
        bpf, self.bpf = self.bpf, None
        if bpf is not None:
            bpf.cleanup()


# ---------------------------------------------------------------- choosing


SOURCE_CLASSES: dict[str, type[LatencySource]] = {"bcc": BccSource, "libbpf": BiolatencySource, "diskstats": DiskstatsSource}
ORDER = ("bcc", "libbpf", "diskstats")


def make_sources(choice: str = "auto", devices: set[str] | None = None, work_dir: str | None = None) -> list[LatencySource]:
    """The sources to try, in order: all of them for ``auto``, else just the one asked for."""
    names = ORDER if choice == "auto" else (choice,)
    out: list[LatencySource] = []
    for n in names:
        if n == "bcc" and work_dir:
            out.append(BccSource(devices, work_dir=work_dir))
        else:
            out.append(SOURCE_CLASSES[n](devices))
    return out


def choose_source(sources: list[LatencySource]) -> tuple[LatencySource | None, dict[str, str]]:
    """Start the first source that is available and starts; return it and why each other one was not used."""
    reasons: dict[str, str] = {}
    chosen = None
    for source in sources:
        if chosen is not None:
            reasons[source.name] = f"not tried: {chosen.name} is used"
            continue
        try:
            ok, why = source.available()
        except Exception as exc:
            ok, why = False, f"availability check failed: {exc}"
        if not ok:
            reasons[source.name] = f"not usable: {why}"
            continue
        t0 = time.monotonic()
        try:
            source.start()
        except Exception as exc:
            source.stop()
            reasons[source.name] = f"not usable: {exc}"
            continue
        chosen = source
        reasons[source.name] = f"used: {why} (started in {time.monotonic() - t0:.1f} s)"
    return chosen, reasons
