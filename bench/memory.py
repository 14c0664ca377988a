"""Memory: peak RSS of every healthmon process while the whole pipeline takes the top ingest rate.

    python bench/memory.py [--rate 100000] [--seconds 60] [--late-share 0.05] [--batch-interval 20]
                           [--settle 90] [--set NAME=VALUE ...] [--keep]

Starts ``healthmon up`` (no mocks) as an operator does, in a temporary data
directory on free ports, with ``collector_processes=2`` (the setting that
takes 100k msg/s in the ingest benchmark), ``batch_interval_s`` =
``--batch-interval`` and ``batch_lateness_s=0`` (so the previous hour is
closed and the scheduler's batch builds have work within the run).  Once
every part is up (API answers, both receivers running, the speed job has
committed a first micro-batch, a first batch build is recorded), it offers
``--rate`` msg/s for ``--seconds``: ``1 - --late-share`` of it as live health
datagrams from ``bench/ingest.py``'s sender processes (``--kind live``: ``ts``
renewed every second), the rest from one more of those senders whose
messages carry a ``ts`` one hour old (late messages: they land in the closed
previous hour, so a batch build rebuilds it).  Meanwhile it asks the API for
summary, series, services and pipeline about once a second.  After the load
it waits (``--settle``, at most) until the collector drained its socket, the
speed job processed everything accepted and a batch build started during the
load has ended, then reads the merged count the API serves and stops
``healthmon up`` with SIGTERM (how each part stopped is recorded).

Every 0.5 s, from start to stop, it reads the RSS of every process under
``healthmon up`` (psutil): the supervisor and its output relays (honcho runs
each part from a forked copy of itself), the collector (its parent and each
receiver), the speed job and its JVM, the scheduler and its JVM (the batch
builds run in it), the API and the agent; and each process's ``VmHWM`` (the
kernel's high-water mark, which also catches peaks between samples).  Each
part's whole tree (Python process plus children: a JVM counts alone and in
its part's tree) is summed per sample as well; pages that forked processes
share count once per process, as RSS does.

Prints a table (process, peak RSS during load and settle, VmHWM, growth
during the load's second half, target, ratio) and the counts that show the
rate was reached (sent, received, accepted, processed by the speed job,
counted by the API).  The only target is the collector's (<= 150 MB, issue
7), judged on the whole collector (all its processes together) and on each
of its processes.  Writes ``bench/results/memory.json`` and the chart
``bench/results/memory.png``; records the load average at start and end and
the cores other processes took during the load (``bench/common.py``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import requests

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results"
sys.path.insert(0, str(REPO))

from bench.common import CpuWatch, figure, machine  # noqa: E402
from tests.procs import free_port, start_healthmon, stop_process, wait_until  # noqa: E402


def _load_ingest_bench():
    """``bench/ingest.py`` as a module (its name would clash with the ``ingest`` package of the project)."""
    spec = importlib.util.spec_from_file_location("bench_ingest", BENCH / "ingest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ingest_bench = _load_ingest_bench()

TARGET_COLLECTOR_MB = 150.0
"""Peak RSS target of the collector at the top ingest rate (issue 7)."""
DEFAULT_RATE = 100_000
"""The top ingest rate: the collector's zero-loss target (issue 7)."""
SAMPLE_S = 0.5
"""Seconds between two RSS samples."""
QUERY_S = 1.0
"""Seconds between two API requests during the load."""
LATE_SHIFT_S = 3600.0
"""Late messages carry a ts this much older than now: the previous hour, closed by the time they arrive."""
START_TIMEOUT_S = 240.0
"""Longest wait for every part to be up (two cold JVMs on a busy machine)."""
MIN_LIFE_SAMPLES = 4
"""A process seen in fewer samples (a launcher, a shell) is listed apart, not in the table."""
PARTS = {"collect": "collector", "speed": "speed", "schedule": "scheduler", "serve": "api", "agent": "agent"}
"""``healthmon <command>`` under ``healthmon up`` -> the part's name in the results."""


# ---------------------------------------------------------------- late sender (a child process)


def role_late_send(port: int, rate: float, seconds: float) -> None:
    """``bench/ingest.py``'s sender, with every datagram's ts LATE_SHIFT_S in the past."""
    fresh = ingest_bench.make_datagrams
    ingest_bench.make_datagrams = lambda count=1000, now=None: fresh(count, time.time() - LATE_SHIFT_S)
    ingest_bench.role_send(port, rate, seconds, "live")


def start_late_sender(port: int, rate: float, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, __file__, "--role", "late-send", "--port", str(port), "--rate", str(rate),
                             "--seconds", str(seconds)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    proc.stdin.write("go\n")  # read by the sender once it is ready
    proc.stdin.flush()
    return proc


# ---------------------------------------------------------------- sampling the process tree


def command_of(proc: psutil.Process) -> str | None:
    """The healthmon command a process runs (``python -m healthmon.cli <command>``, also while still ``sh -c "exec ..."``)."""
    words = [word for arg in proc.cmdline()[1:] for word in arg.split()]
    return words[words.index("healthmon.cli") + 1] if "healthmon.cli" in words[:-1] else None


class TreeSampler(threading.Thread):
    """Every SAMPLE_S: RSS of each process under ``healthmon up`` and of each part's tree; VmHWM per process.

    Kept by pid and named at the end: a JVM starts as spark-submit's shell and becomes ``java`` under the same pid.
    """

    def __init__(self, root_pid: int) -> None:
        super().__init__(daemon=True)
        self.root = psutil.Process(root_pid)
        self.started = time.monotonic()
        self.phase = "start"
        self.info: dict[int, dict] = {root_pid: {"part": "supervisor", "top": True, "name": "healthmon up"}}
        self.rss: dict[int, list[tuple[float, str, float]]] = {}  # pid -> (t, phase, MB)
        self.hwm_mb: dict[int, float] = {}
        self.pss_mb: dict[int, float] = {}  # at the end of the load
        self._stop_event = threading.Event()

    def _classify(self, proc: psutil.Process) -> dict:
        """The part a process belongs to (the nearest ancestor, or itself, that runs ``healthmon <part>``) and whether it
        is the part's main process (its parent runs something else: the collector's receivers are forks of it)."""
        chain = proc
        while chain is not None and chain.pid != self.root.pid:
            command = command_of(chain)
            if command in PARTS:
                parent = proc.parent()
                top = chain.pid == proc.pid and (parent is None or command_of(parent) != command)
                if top and proc.ppid() != self.root.pid:
                    # honcho runs each part from a forked copy of `healthmon up` that relays its output
                    self.info.setdefault(proc.ppid(), {"part": "supervisor", "top": False})["relay_of"] = PARTS[command]
                return {"part": PARTS[command], "top": top}
            chain = chain.parent()
        return {"part": "supervisor", "top": False}

    def sample(self) -> None:
        t = round(time.monotonic() - self.started, 2)
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return
        for proc in procs:
            try:
                info = self.info.get(proc.pid)
                if info is None or "name" not in info or info["name"] in ("sh", "bash"):
                    info = self.info[proc.pid] = {**self.info.get(proc.pid, {}), **self._classify(proc), "name": proc.name()}
                rss_mb = proc.memory_info().rss / 2**20
            except psutil.Error:
                continue  # gone between the listing and the read
            self.rss.setdefault(proc.pid, []).append((t, self.phase, round(rss_mb, 1)))
            hwm_kb = ingest_bench._peak_rss_kb(proc.pid)
            if hwm_kb is not None:
                self.hwm_mb[proc.pid] = max(self.hwm_mb.get(proc.pid, 0.0), round(hwm_kb / 1024, 1))

    def run(self) -> None:
        while not self._stop_event.wait(SAMPLE_S):
            self.sample()

    def stop(self) -> None:
        self._stop_event.set()
        self.join()

    def now(self) -> float:
        return round(time.monotonic() - self.started, 2)

    def label(self, pid: int) -> str:
        """A unique name: by role for the processes that lived through the run, with the pid for short-lived ones."""
        name = self._role(pid)
        same = [p for p in self.rss if self._role(p) == name and len(self.rss[p]) >= MIN_LIFE_SAMPLES]
        return name if same == [pid] else f"{name} [{pid}]"

    def _role(self, pid: int) -> str:
        info = self.info[pid]
        part = info["part"]
        if pid == self.root.pid:
            return "supervisor (healthmon up)"
        if "relay_of" in info:
            return f"supervisor: output relay of {info['relay_of']}"
        if info["top"]:
            return f"{part} (python)"
        if info["name"] == "java":
            return f"{part} JVM" + (" (runs the batch builds)" if part == "scheduler" else "")
        if part == "collector":
            receivers = sorted(p for p, i in self.info.items() if i["part"] == "collector" and not i["top"] and p in self.rss)
            return f"collector receiver {receivers.index(pid) + 1}"
        return f"{part} {info['name']}"

    def series(self) -> dict[str, list[tuple[float, str, float]]]:
        """label -> RSS samples: each process that lived at least MIN_LIFE_SAMPLES samples, then each part's tree.

        A tree sums its long-lived processes only: a process the JVM forks to run ``chmod`` or ``readlink`` (Hadoop's
        local file system does, for each checkpoint file) shows the JVM's whole RSS for an instant, all of it shared.
        """
        lived = {pid: points for pid, points in self.rss.items() if len(points) >= MIN_LIFE_SAMPLES}
        out = {self.label(pid): points for pid, points in lived.items()}
        trees: dict[str, dict[float, list]] = {}
        for pid, points in lived.items():
            for part in (self.info[pid]["part"], "all processes"):
                for t, phase, mb in points:
                    trees.setdefault(part, {}).setdefault(t, [phase, 0.0])[1] += mb
        for part, by_t in trees.items():
            out[f"[{part} tree]"] = [(t, phase, round(mb, 1)) for t, (phase, mb) in sorted(by_t.items())]
        return out

    def short_lived(self) -> list[dict]:
        """Processes seen in fewer than MIN_LIFE_SAMPLES samples (spark-submit's launcher and the like)."""
        return [{"process": self.label(pid), "samples": len(points), "peak_rss_mb": max(mb for _, _, mb in points)}
                for pid, points in self.rss.items() if len(points) < MIN_LIFE_SAMPLES]

    def take_pss(self) -> None:
        """PSS of every process now (reads smaps: too slow to sample): shared pages split among the processes sharing them."""
        for proc in [self.root, *self.root.children(recursive=True)]:
            try:
                self.pss_mb[proc.pid] = round(proc.memory_full_info().pss / 2**20, 1)
            except psutil.Error:
                pass

    def pss(self) -> dict[str, float]:
        return {self.label(pid): mb for pid, mb in self.pss_mb.items() if pid in self.rss}

    def vmhwm(self) -> dict[str, float]:
        return {self.label(pid): mb for pid, mb in self.hwm_mb.items()}


def growth_mb_per_min(points: list[tuple[float, str, float]], t0: float, t1: float) -> float | None:
    """Least-squares slope of RSS over [t0, t1], MB per minute (None with too few samples)."""
    inside = [(t, mb) for t, _, mb in points if t0 <= t <= t1]
    if len(inside) < 4:
        return None
    return round(statistics.linear_regression([t for t, _ in inside], [mb for _, mb in inside]).slope * 60, 1)


# ---------------------------------------------------------------- API queries during the load


class ApiReader(threading.Thread):
    """About once a second, one of summary / series / services / pipeline: count, errors, latency."""

    def __init__(self, base: str, speed_rows_now: Callable[[], int]) -> None:
        super().__init__(daemon=True)
        self.base = base
        self.speed_rows_now = speed_rows_now
        self.started = time.monotonic()
        self.visible: list[tuple[float, int, int]] = []  # (s since the load began, summary's total count, speed job's rows then)
        self.session = requests.Session()
        self.latencies_ms: list[float] = []
        self.errors: list[str] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        paths = ["/api/v1/summary", "/api/v1/services/{service}/series?step=60s", "/api/v1/services", "/api/v1/pipeline"]
        service = None  # the series is asked of a service the last summary showed
        i = 0
        while not self._stop_event.wait(QUERY_S):
            path = paths[i % len(paths)]
            i += 1
            if "{service}" in path:
                if service is None:
                    continue
                path = path.format(service=service)
            started = time.perf_counter()
            try:
                answer = self.session.get(self.base + path, timeout=10)
                if answer.status_code != 200:
                    self.errors.append(f"{path}: {answer.status_code}")
                elif path == paths[0] and answer.json()["services"]:
                    service = answer.json()["services"][0]["service"]
                    self.visible.append((round(time.monotonic() - self.started, 1), sum(s["count"] for s in answer.json()["services"]),
                                         self.speed_rows_now()))
            except requests.RequestException as exc:
                self.errors.append(f"{path}: {type(exc).__name__}")
            self.latencies_ms.append((time.perf_counter() - started) * 1000)

    def stop(self) -> dict:
        self._stop_event.set()
        self.join()
        lat = sorted(self.latencies_ms)
        return {"requests": len(lat), "errors": len(self.errors), "error_examples": self.errors[:5], "summary_counts": self.visible,
                "p50_ms": round(statistics.median(lat), 1) if lat else None, "max_ms": round(lat[-1], 1) if lat else None}


# ---------------------------------------------------------------- pipeline state


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def collector_counts(state_dir: Path) -> dict:
    states = [s for p in sorted(state_dir.glob("collector-*.json")) if (s := read_json(p))]
    return {key: sum(s.get(key, 0) for s in states) for key in ("received", "accepted", "rejected", "landed_messages")} | {
        "receivers": len(states), "running": sum(s.get("state") == "running" for s in states)}


def batch_runs(state_dir: Path) -> list[dict]:
    try:
        lines = (state_dir / "batch_runs.jsonl").read_text().splitlines()
    except OSError:
        return []
    return [json.loads(line) for line in lines if line.strip()]


def speed_rows(state_dir: Path) -> tuple[int, int]:
    """(micro-batches of the health stream, input rows of every stream) of the speed job so far."""
    streams = (read_json(state_dir / "speed.json") or {}).get("streams", {})
    return streams.get("health", {}).get("micro_batches", 0), sum(s.get("input_rows", 0) for s in streams.values())


def stop_outcomes(log_path: str) -> dict[str, str]:
    """How each part stopped, from honcho's lines in the log of ``healthmon up``: "rc=N", or "SIGKILL" after the grace time."""
    out: dict[str, str] = {}
    for line in Path(log_path).read_text(errors="replace").splitlines():
        if (m := re.search(r"system\s+\| (\w+) stopped \(rc=(-?\d+)\)", line)) and out.get(m[1]) != "SIGKILL":
            out[m[1]] = f"rc={m[2]}"
        elif m := re.search(r"system\s+\| sending SIGKILL to (\w+)", line):
            out[m[1]] = "SIGKILL"
    return out


def merged_count(base: str) -> int:
    """Messages the merged API counts over the last two hours (the late ones included)."""
    now = time.time()
    answer = requests.get(f"{base}/api/v1/summary", params={"from": now - 2 * 3600, "to": now + 60}, timeout=30)
    answer.raise_for_status()
    return sum(s["count"] for s in answer.json()["services"])


# ---------------------------------------------------------------- results


def process_rows(sampler: TreeSampler, load: tuple[float, float]) -> list[dict]:
    t0, t1 = load
    half = (t0 + t1) / 2
    hwm, pss = sampler.vmhwm(), sampler.pss()
    rows = []
    for label, points in sampler.series().items():
        in_load = [mb for t, phase, mb in points if phase in ("load", "settle")]
        at_end = [mb for t, _, mb in points if t <= t1]
        tree = label.startswith("[")
        part = label.strip("[]").removesuffix(" tree") if tree else label.split(" ")[0].rstrip(":")
        is_collector = part == "collector"
        peak = max(in_load, default=None)
        row = {"process": label, "part": part, "tree": tree,
               "peak_rss_mb": peak, "peak_rss_mb_whole_run": max(mb for _, _, mb in points),
               "vmhwm_mb": hwm.get(label), "pss_at_load_end_mb": pss.get(label),
               "rss_at_load_start_mb": next((mb for t, _, mb in points if t >= t0), None),
               "rss_at_load_end_mb": at_end[-1] if at_end else None, "growth_mb_per_min_second_half": growth_mb_per_min(points, half, t1),
               "samples": len(points), "target_mb": TARGET_COLLECTOR_MB if is_collector else None}
        if is_collector and peak is not None:
            # the kernel's high-water mark counts too: a peak between two samples is still a peak
            worst = max(peak, row["vmhwm_mb"] or 0.0)
            row["ratio"] = round(worst / TARGET_COLLECTOR_MB, 3)
            row["met"] = worst <= TARGET_COLLECTOR_MB
        rows.append(row)
    for tree in (r for r in rows if r["tree"]):  # a tree's PSS: its processes' PSS, summed (no page counted twice)
        parts = [r["pss_at_load_end_mb"] for r in rows if not r["tree"] and tree["part"] in (r["part"], "all processes")]
        tree["pss_at_load_end_mb"] = round(sum(mb for mb in parts if mb is not None), 1) if parts else None
    order = ["supervisor", "collector", "speed", "scheduler", "api", "agent", "all processes"]
    rows.sort(key=lambda r: (order.index(r["part"]) if r["part"] in order else len(order), r["tree"], r["process"]))
    return rows


def chart(result: dict, sampler_series: dict, path: Path) -> None:
    rows = [r for r in result["processes"] if r["peak_rss_mb"] is not None and r["part"] != "all processes"]
    m = result["machine"]
    c = result["counts"]
    title = (f"healthmon memory at {result['rate_per_s']:,} msg/s offered for {result['seconds']:g} s "
             f"(accepted {c['accepted_per_s']:,}/s, {c['accepted_of_sent']:.1%} of sent); {m['cpus']} CPUs, "
             f"load average {m['loadavg_at_start'][0]:.1f} at start, {m['loadavg_at_end'][0]:.1f} at end, "
             f"{m['cpu_during_load']['others_cores']} cores taken by other processes during the load")
    with figure(path, title, 1, 2, figsize=(17, 6.5), gridspec_kw={"width_ratios": [1, 1.2]}) as (plt, _fig, (bars_ax, time_ax)):
        labels = [r["process"] for r in rows][::-1]
        peaks = [r["peak_rss_mb"] for r in rows][::-1]
        hwm = [r["vmhwm_mb"] or 0 for r in rows][::-1]
        colors = ["#c44e52" if r["part"] == "collector" else "#8172b2" if r["tree"] else "#4c72b0" for r in rows][::-1]
        ys = range(len(labels))
        bars_ax.barh(ys, hwm, color="#dddddd", label="VmHWM (kernel high-water mark)")
        bars = bars_ax.barh(ys, peaks, height=0.55, color=colors, label="peak sampled RSS during the load")
        for bar, mb in zip(bars, peaks, strict=True):
            bars_ax.annotate(f"{mb:.0f}", (bar.get_width(), bar.get_y() + bar.get_height() / 2), va="center", fontsize=7,
                             textcoords="offset points", xytext=(3, 0))
        bars_ax.axvline(TARGET_COLLECTOR_MB, color="red", linestyle="--", label=f"collector target {TARGET_COLLECTOR_MB:.0f} MB")
        bars_ax.set_yticks(list(ys), labels, fontsize=7)
        bars_ax.set_xlabel("MB")
        bars_ax.set_title("Peak RSS per process and per part's tree ([...]); target: collector only", fontsize=9)
        bars_ax.legend(fontsize=7, loc="lower right")
        bars_ax.grid(alpha=0.3, axis="x")

        # every process but honcho's output relays (flat, ~23 MB each: they are in the supervisor's tree), and the collector's tree
        shown = [label for label in sampler_series if not label.startswith(("[", "supervisor:")) or label == "[collector tree]"]
        colors = plt.get_cmap("tab20").colors
        for i, label in enumerate(shown):
            points = sampler_series[label]
            time_ax.plot([t for t, _, _ in points], [mb for _, _, mb in points], label=label, linewidth=1.2, color=colors[i % len(colors)],
                         linestyle="--" if label.startswith("[") else "-")
        t0, t1 = result["load_window_s"]
        time_ax.axvspan(t0, t1, color="#ffe9a8", alpha=0.4, label=f"load {result['rate_per_s']:,} msg/s")
        for build in result["batch_builds_during_load"]:
            time_ax.axvline(build["ended_at_s"], color="#55a868", linestyle=":", linewidth=1)
        time_ax.axhline(TARGET_COLLECTOR_MB, color="red", linestyle="--", linewidth=1)
        time_ax.set_xlabel("seconds since healthmon up started (green dotted: a batch build ended)")
        time_ax.set_ylabel("RSS, MB")
        time_ax.set_title("RSS over time", fontsize=9)
        time_ax.legend(fontsize=6, loc="upper left")
        time_ax.grid(alpha=0.3)


def print_table(result: dict) -> None:
    print(f"\n{'process':<42} {'peak RSS MB':>11} {'VmHWM MB':>9} {'PSS MB':>7} {'growth MB/min':>13} {'target':>9} {'ratio':>6}")
    print("-" * 103)
    for r in result["processes"]:
        if r["peak_rss_mb"] is None:
            continue
        growth = r["growth_mb_per_min_second_half"]
        target = f"{r['target_mb']:.0f} MB" if r["target_mb"] else "no target"
        ratio = f"{r['ratio']:.2f}" if "ratio" in r else "-"
        hwm = "-" if r["vmhwm_mb"] is None else f"{r['vmhwm_mb']:.1f}"
        pss = "-" if r["pss_at_load_end_mb"] is None else f"{r['pss_at_load_end_mb']:.1f}"
        print(f"{r['process']:<42} {r['peak_rss_mb']:>11.1f} {hwm:>9} {pss:>7} "
              f"{'-' if growth is None else f'{growth:+.1f}':>13} {target:>9} {ratio:>6}")


# ---------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=DEFAULT_RATE, help="offered msg/s (live and late together)")
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--late-share", type=float, default=0.05, help="share of the rate sent with a ts one hour old")
    parser.add_argument("--batch-interval", type=float, default=20.0, help="batch_interval_s of the run, seconds")
    parser.add_argument("--settle", type=float, default=90.0,
                        help="after the load, wait at most this long for the speed job to catch up and a batch build of the load to end")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="NAME=VALUE", help="a setting for every process")
    parser.add_argument("--keep", action="store_true", help="keep the data directory (its logs/ has every part's output)")
    parser.add_argument("--role", choices=["late-send"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "late-send":
        role_late_send(args.port, args.rate, args.seconds)
        return 0
    from tqdm import tqdm

    args.rate = int(args.rate)
    info = machine()
    info["loadavg_at_start"] = [round(x, 2) for x in info["loadavg_at_start"]]
    at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    udp_port, api_port = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_STREAM)
    data_dir = Path(tempfile.mkdtemp(prefix="healthmon-bench-memory-"))
    state_dir = data_dir / "state"
    settings = {"data_dir": str(data_dir), "udp_port": str(udp_port), "api_port": str(api_port), "collector_processes": "2",
                "batch_interval_s": str(args.batch_interval), "batch_lateness_s": "0"}
    for item in args.overrides:
        name, _, value = item.partition("=")
        settings[name.strip().lower()] = value
    env = {f"HEALTHMON_{name.upper()}": value for name, value in settings.items()}
    base = f"http://127.0.0.1:{api_port}"
    late_rate = args.rate * args.late_share
    live_rate = args.rate - late_rate
    started = time.monotonic()
    up = start_healthmon(["up"], env)
    sampler = TreeSampler(up.pid)
    sampler.start()
    reader = None
    sent_live: dict = {}
    try:
        print(f"healthmon up (pid {up.pid}), data in {data_dir}; waiting for every part ...", flush=True)

        def all_up() -> bool:
            if up.poll() is not None:
                raise RuntimeError(f"healthmon up exited {up.returncode}: see {up.log_path}")
            counts = collector_counts(state_dir)
            # the speed job's first micro-batch is slow (planning, code generation): the agent's messages make one
            return (requests.get(f"{base}/healthz", timeout=1).ok and counts["running"] == 2 and speed_rows(state_dir)[0] > 0
                    and bool(batch_runs(state_dir)))

        wait_until(all_up, START_TIMEOUT_S, "API, two receivers, a first speed micro-batch and a first batch build", interval=0.5)
        warm_up_s = round(time.monotonic() - started, 1)
        before = collector_counts(state_dir)
        sampler.phase = "load"
        load_start, load_start_epoch = sampler.now(), time.time()
        cpu = CpuWatch()
        reader = ApiReader(base, lambda: speed_rows(state_dir)[1])
        reader.start()
        late = start_late_sender(udp_port, late_rate, args.seconds) if late_rate > 0 else None
        bar_format = "{l_bar}{bar}| {n:.0f}/{total:.0f} s of load [{elapsed}<{remaining}]"
        with tqdm(total=args.seconds, unit="s", desc=f"memory bench {args.rate // 1000}k msg/s", bar_format=bar_format,
                  mininterval=1.0) as bar:
            sent_live = ingest_bench.run_senders(udp_port, int(live_rate), args.seconds, ingest_bench.SENDER_RATE, "live", bar)
        sent_late = json.loads(late.communicate(timeout=30)[0].strip().splitlines()[-1]) if late else {"sent": 0, "errors": 0}
        load_end = sampler.now()
        info["cpu_during_load"] = cpu.stop()
        sampler.take_pss()
        sampler.phase = "settle"
        api = reader.stop()
        reader = None
        ingest_bench.wait_quiet(lambda: collector_counts(state_dir)["received"])
        after = collector_counts(state_dir)

        def settled() -> dict:
            return {"speed_caught_up": speed_rows(state_dir)[1] >= after["accepted"],  # both count from the start
                    # with late messages, a build that rebuilt their hour (an earlier one may have found no file yet)
                    "batch_build_of_the_load_done": any(r["started_at"] >= load_start_epoch and (r.get("hours_rebuilt") or late_rate == 0)
                                                        for r in batch_runs(state_dir))}

        deadline = time.monotonic() + args.settle
        while time.monotonic() < deadline and not all(settled().values()):
            time.sleep(0.5)
        settle = {**settled(), "seconds": round(sampler.now() - load_end, 1)}
        speed_total = speed_rows(state_dir)[1]
        counted = [merged_count(base) for _ in range(3)]  # three requests, on fresh connections
        sampler.sample()
        sampler.phase = "stop"
    finally:
        if reader is not None:
            reader.stop()
        stop_code = stop_process(up, timeout=60)
        sampler.stop()
    info["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    wall_s = round(time.monotonic() - started, 1)

    runs = batch_runs(state_dir)
    builds = []
    for run in runs:
        ended = run.get("ended_at") or (run.get("started_at", 0) + run.get("duration_s", 0))
        builds.append({"status": run.get("status"), "duration_s": run.get("duration_s"), "hours_rebuilt": run.get("hours_rebuilt"),
                       "rows_written": run.get("rows_written"),
                       "ended_at_s": round(load_start + ended - load_start_epoch, 1),
                       "started_during_load": run["started_at"] >= load_start_epoch})
    sent = sent_live["sent"] + sent_late["sent"]
    received = after["received"] - before["received"]
    accepted = after["accepted"] - before["accepted"]
    seconds = sent_live["seconds"]
    counts = {
        "sent": sent, "sent_live": sent_live["sent"], "sent_late": sent_late["sent"],
        "send_errors": sent_live["errors"] + sent_late["errors"],
        "offered_per_s": round(sent / seconds), "received": received, "accepted": accepted,
        "rejected": after["rejected"] - before["rejected"], "accepted_per_s": round(accepted / seconds),
        "accepted_of_sent": round(accepted / sent, 5) if sent else 0.0,
        "speed_input_rows": speed_total,
        "merged_api_count_last_2h": counted[-1], "merged_api_counts_repeated": counted,
        "note": "received/accepted: collector counters over the load (the agent's few messages included); "
                "merged_api_count_last_2h: what /api/v1/summary counts after the drain, warm-up probes and agent included",
    }
    result = {
        "bench": "memory", "at": at, "machine": info, "rate_per_s": args.rate, "seconds": args.seconds,
        "late_share": args.late_share, "settings": settings | {"data_dir": "<temporary>"}, "sample_interval_s": SAMPLE_S,
        "warm_up_s": warm_up_s, "wall_s": wall_s, "load_window_s": [load_start, load_end], "stop_exit_code": stop_code,
        "stop_outcomes": stop_outcomes(up.log_path), "short_lived_processes": sampler.short_lived(),
        "counts": counts, "settle": settle, "api_during_load": api, "batch_builds": builds,
        "batch_builds_during_load": [b for b in builds if b["started_during_load"]],
        "target_collector_mb": TARGET_COLLECTOR_MB,
    }
    result["processes"] = process_rows(sampler, (load_start, load_end))
    collector = [r for r in result["processes"] if r["part"] == "collector" and "ratio" in r]
    result["collector_met"] = bool(collector) and all(r["met"] for r in collector)
    RESULTS.mkdir(exist_ok=True)
    # RSS series: one line per process ({"t": seconds since start, "mb": RSS}; load_window_s says which samples were the load)
    series = ",\n".join(f"  {json.dumps(label)}: {json.dumps({'t': [t for t, _, _ in points], 'mb': [mb for _, _, mb in points]})}"
                         for label, points in sampler.series().items())
    text = json.dumps({**result, "rss_series_mb": None}, indent=1)
    (RESULTS / "memory.json").write_text(text.replace('"rss_series_mb": null', '"rss_series_mb": {\n' + series + "\n }") + "\n")
    chart(result, sampler.series(), RESULTS / "memory.png")

    print_table(result)
    c = result["counts"]
    done = [b for b in result["batch_builds_during_load"] if b["status"] == "ok"]
    print(f"\noffered {c['offered_per_s']:,} msg/s ({c['sent']:,} sent, {args.late_share:.0%} with a ts one hour old) for "
          f"{seconds:.1f} s; collector received {c['received']:,}, accepted {c['accepted']:,} ({c['accepted_of_sent']:.2%} of sent, "
          f"{c['accepted_per_s']:,}/s); speed job processed {c['speed_input_rows']:,} rows; the merged API counts "
          f"{c['merged_api_count_last_2h']:,}")
    print(f"batch builds started during the load: {len(result['batch_builds_during_load'])} ({len(done)} ok, durations "
          f"{[b['duration_s'] for b in result['batch_builds_during_load']]} s); API during the load: {api['requests']} requests, "
          f"{api['errors']} errors, p50 {api['p50_ms']} ms, max {api['max_ms']} ms")
    print(f"collector target {TARGET_COLLECTOR_MB:.0f} MB (whole collector and each of its processes, peak RSS or VmHWM): "
          f"{'met' if result['collector_met'] else 'MISSED'}; warm-up {warm_up_s} s, whole run {wall_s} s, "
          f"healthmon up exited {stop_code}; "
          f"load average {info['loadavg_at_start'][0]:.2f} at start, {info['loadavg_at_end'][0]:.2f} at end; cores busy during the "
          f"load: {info['cpu_during_load']}")
    print("results: bench/results/memory.json, chart: bench/results/memory.png")
    if args.keep:
        print(f"data directory kept: {data_dir}")
    else:
        shutil.rmtree(data_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a stopped benchmark still stops healthmon up (finally)
    sys.exit(main())
