"""Freshness: how long from a UDP send until the message is counted by the merged API, at several loads.

Starts the real collector, speed job and API on free ports (temporary data
directory; default settings except ``collector_processes=2``, the setting that
takes 50k msg/s without loss; ``--set`` changes any).  For each background
load of ``--loads`` msg/s (health datagrams from pre-built messages whose
``ts`` is renewed every second, sent by ``bench/ingest.py``'s sender
processes), it waits until the pipeline has settled at that load, then sends
``--probes`` probe messages one at a time, at random phases, and polls
``/api/v1/summary?service=<probe>`` every ``POLL_S`` until the probe's count
appears.  A probe not visible within ``PROBE_TIMEOUT_S`` counts as lost.

Where each probe's time went, from what the parts leave behind:

- ``segment``: send -> its landing segment was published (the segment file's
  ctime, set by the rename that publishes it);
- ``discovery``: -> the micro-batch that read the segment was triggered
  (which micro-batch: the file source's log in the checkpoint; when: Spark's
  query progress, which the speed job keeps in ``state/speed.json``);
- ``plan``: -> its ``foreachBatch`` started (Spark: latestOffset, walCommit,
  getBatch, queryPlanning);
- ``aggregate``: the Spark job of the batch transforms, collected as Arrow;
- ``publish``: the DuckDB upsert into a copy of the real-time view and its
  atomic publish (lock, copy, change, checkpoint, fsync + rename);
- ``api``: -> the API answered with the probe (poll interval, view re-attach).

``--history-hours H`` first lands H hours of raw history below the current
hour (``HISTORY_SEGMENTS_PER_HOUR`` one-line segments an hour: what one
receiver publishes at the default 0.5 s) and publishes a batch view whose
horizon covers them, as a pipeline that has run for a while has: the speed
job then has a landing tree to list that is not its own micro-batches' files.

Prints p50/p95/p99 per load, the median breakdown, CPU cores and peak RSS
(process + children: the speed job's JVM, the collector's receivers) of each
part, and writes ``bench/results/freshness.json`` and the chart
``bench/results/freshness.png``.  The 1-minute load average is recorded at
start, at every load and at the end (the machine may be shared).

    python bench/freshness.py [--probes 40] [--loads 1000,10000,50000] [--history-hours 2] [--set NAME=VALUE ...]
"""

from __future__ import annotations

import argparse
import calendar
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import requests
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import figure, write_results  # noqa: E402
from bench.common import machine as common_machine  # noqa: E402
from healthmon.schema import encode  # noqa: E402
from tests.procs import free_port, start_healthmon, stop_process, wait_until  # noqa: E402

TARGET_P95_S = 2.0
PARTS = ("collect", "speed", "serve")
DEFAULT_LOADS = (1_000, 10_000, 50_000)
DEFAULT_SETTINGS = ("collector_processes=2",)
"""Settings of every run unless ``--set`` names them: two receivers take 50k msg/s without loss (one lost ~6%)."""
SETTLE_S = 10.0  # after the load changed, wait this long before probing (the speed layer's batches grow to the new size)
PROBE_TIMEOUT_S = 30.0
HISTORY_SEGMENTS_PER_HOUR = 7200  # segments landed in an hour by one receiver at segment_max_seconds=0.5
POLL_S = 0.02
RSS_SAMPLE_S = 0.5
SENDER_RATE_MAX = 100_000  # msg/s per sender process (more senders above it)
STEPS = ("segment", "discovery", "plan", "aggregate", "publish", "api")
RESULTS = Path(__file__).resolve().parent / "results"
INGEST = Path(__file__).resolve().parent / "ingest.py"


def process_tree(pid: int) -> list[psutil.Process]:
    """A process and its descendants (the speed job's JVM, the collector's receivers)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def cpu_seconds(pid: int) -> float:
    """CPU time of a process and its descendants."""
    total = 0.0
    for proc in process_tree(pid):
        try:
            total += sum(proc.cpu_times()[:2])
        except psutil.NoSuchProcess:
            pass
    return total


class PeakRss(threading.Thread):
    """Samples the summed RSS of each part's process tree every ``RSS_SAMPLE_S``; ``take()`` returns the peaks and restarts them."""

    def __init__(self, pids: dict[str, int]) -> None:
        super().__init__(daemon=True)
        self.pids = pids
        self.peaks = dict.fromkeys(pids, 0)
        self.lock = threading.Lock()
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(RSS_SAMPLE_S):
            for part, pid in self.pids.items():
                rss = 0
                for proc in process_tree(pid):
                    try:
                        rss += proc.memory_info().rss
                    except psutil.NoSuchProcess:
                        pass
                with self.lock:
                    self.peaks[part] = max(self.peaks[part], rss)

    def take(self) -> dict[str, float]:
        with self.lock:
            peaks, self.peaks = self.peaks, dict.fromkeys(self.pids, 0)
        return {part: round(rss / 2**20, 1) for part, rss in peaks.items()}


def start_load(port: int, rate: int) -> list[subprocess.Popen]:
    """Sender processes that keep ``rate`` msg/s of live health datagrams going until stopped."""
    senders = max(1, -(-rate // SENDER_RATE_MAX))
    procs = [subprocess.Popen([sys.executable, str(INGEST), "--role", "send", "--port", str(port), "--rate", str(rate / senders),
                               "--seconds", "0", "--kind", "live"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for _ in range(senders)]
    for proc in procs:
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("a load sender did not start")
    for proc in procs:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    return procs


def stop_load(procs: list[subprocess.Popen]) -> dict:
    """Stop the senders; what they sent."""
    outs = []
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
        outs.append(json.loads(out.strip().splitlines()[-1]))
    return {"sent": sum(o["sent"] for o in outs), "seconds": max(o["seconds"] for o in outs)}


def collector_counts(data_dir: Path) -> dict:
    received = accepted = 0
    for path in (data_dir / "state").glob("collector-*.json"):
        try:
            state = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        received += state.get("received", 0)
        accepted += state.get("accepted", 0)
    return {"received": received, "accepted": accepted}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def land_history(data_dir: Path, env: dict[str, str], hours: int) -> dict:
    """``hours`` hours of one-line raw segments below the current hour, and a batch view whose horizon is above them."""
    from batch_jobs.build import closed_horizon
    from healthmon.config import load_settings
    from healthmon.landing import HOUR_S, landing_for, raw_segment_path
    from healthmon.schema import landed_line, parse_message
    from healthmon.views import BATCH_VIEW, update_view

    settings = load_settings(environ=env)
    store = landing_for(settings)
    horizon = closed_horizon(time.time(), settings.batch_lateness_s)
    first = horizon - hours * HOUR_S
    step = HOUR_S / HISTORY_SEGMENTS_PER_HOUR
    for i in range(hours * HISTORY_SEGMENTS_PER_HOUR):
        ts = first + i * step
        line = landed_line(parse_message(probe_message("history", ts), ts, settings.max_clock_skew_s), f"h-1-{i}", ts)
        store.publish(raw_segment_path("health", ts, f"h-1-{i:06d}"), line)
    update_view(settings.views_dir / BATCH_VIEW,
                lambda con: con.execute("INSERT INTO view_meta VALUES (?, ?, ?, ?, ?, ?)",
                                        [horizon, time.time(), settings.window_s, "bench-history", 0, 0]))
    return {"hours": hours, "segments": hours * HISTORY_SEGMENTS_PER_HOUR, "horizon_ts": horizon}


def probe_message(service: str, ts: float) -> bytes:
    return encode({"service": service, "ts": ts, "cpu_pct": 1, "ram_total_gb": 1, "ram_free_gb": 1, "disk_total_gb": 1, "disk_free_gb": 1})


class Tracer:
    """Follows one probe through the files the parts leave behind (see the module docstring)."""

    def __init__(self, data_dir: Path) -> None:
        self.raw = data_dir / "landing" / "raw" / "type=health"
        self.source_log = data_dir / "speed" / "health" / "checkpoint" / "sources" / "0"
        self.speed_state = data_dir / "state" / "speed.json"

    def segment(self, service: str, sent: float) -> Path | None:
        """The published segment holding ``service``'s probe (segments published after ``sent``, oldest first)."""
        needle = f'"service":"{service}"'.encode()
        candidates = sorted((p for p in self.raw.rglob("*.jsonl") if p.stat().st_ctime >= sent - 1), key=lambda p: p.stat().st_ctime)
        for path in candidates:
            if needle in path.read_bytes():
                return path
        return None

    def batch_id(self, segment: Path) -> int | None:
        """The micro-batch whose file-source log entry names ``segment`` (newest log files first)."""
        name = segment.name
        logs = sorted((p for p in self.source_log.iterdir() if not p.name.startswith(".")), key=lambda p: p.stat().st_mtime, reverse=True)
        for log_file in logs[:20]:
            for line in log_file.read_text().splitlines()[1:]:
                if name in line:
                    return json.loads(line)["batchId"]
        return None

    def batch(self, batch_id: int) -> dict | None:
        try:
            state = json.loads(self.speed_state.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        for batch in state.get("streams", {}).get("health", {}).get("recent_batches", []):
            if batch["batch_id"] == batch_id and "spark_ms" in batch:
                return batch
        return None

    def breakdown(self, service: str, sent: float, visible: float) -> dict | None:
        """Seconds per step of ``STEPS`` (they add up to ``visible - sent``), plus Spark's phases of the micro-batch."""
        segment = self.segment(service, sent)
        batch_id = self.batch_id(segment) if segment else None
        deadline = time.time() + 5
        batch = None
        while batch_id is not None and batch is None and time.time() < deadline:  # Spark reports progress after the commit
            batch = self.batch(batch_id)
            if batch is None:
                time.sleep(0.05)
        if batch is None:
            return None
        published_segment = segment.stat().st_ctime
        triggered = calendar.timegm(time.strptime(batch["trigger_at"][:19], "%Y-%m-%dT%H:%M:%S")) + float("0" + batch["trigger_at"][19:-1])
        aggregate = batch["foreach_s"]["aggregate"]
        steps = {
            "segment": published_segment - sent,
            "discovery": triggered - published_segment,
            "plan": batch["foreach_started_at"] - triggered,
            "aggregate": aggregate,
            "publish": batch["published_at"] - batch["foreach_started_at"] - aggregate,
            "api": visible - batch["published_at"],
        }
        return {"steps": {k: round(v, 4) for k, v in steps.items()}, "batch_id": batch_id, "input_rows": batch["input_rows"],
                "spark_ms": batch["spark_ms"], "foreach_s": batch["foreach_s"], "view_bytes": batch["view_bytes"]}


def median_breakdown(traces: list[dict]) -> dict:
    """Median of each step, of Spark's phases and of the foreachBatch steps over the traced probes."""
    if not traces:
        return {}

    def medians(key: str) -> dict:
        names = sorted({name for t in traces for name in t[key]})
        return {name: round(statistics.median(t[key].get(name, 0) for t in traces), 4) for name in names}

    return {"steps_s": {name: round(statistics.median(t["steps"][name] for t in traces), 4) for name in STEPS},
            "spark_ms": medians("spark_ms"), "foreach_s": medians("foreach_s"),
            "input_rows": int(statistics.median(t["input_rows"] for t in traces)),
            "view_bytes": int(statistics.median(t["view_bytes"] or 0 for t in traces)), "traced_probes": len(traces)}


def chart(result: dict, path: Path) -> None:
    rows = [r for r in result["loads"] if r["probes"]]
    labels = [f"{r['load_per_s']:,}/s\n(lost probes: {r['lost_probes']})" for r in rows]
    m = result["machine"]
    title = (f"Freshness at several loads ({m['cpus']} CPUs, load average {m['loadavg_at_start'][0]:.1f} at start, "
             f"{m['loadavg_at_end'][0]:.1f} at end); settings: {', '.join(result['settings']) or 'defaults'}")
    with figure(path, title, 1, 2, figsize=(12, 5)) as (_plt, _fig, (ax, bx)):
        width = 0.25
        for i, (key, color) in enumerate((("p50_s", "#4c72b0"), ("p95_s", "#dd8452"), ("p99_s", "#c44e52"))):
            xs = [j + (i - 1) * width for j in range(len(rows))]
            bars = ax.bar(xs, [r[key] for r in rows], width, label=key.removesuffix("_s"), color=color)
            for bar in bars:
                ax.annotate(f"{bar.get_height():.2f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                            va="bottom", fontsize=8)
        ax.axhline(TARGET_P95_S, color="red", linestyle="--", label=f"p95 target {TARGET_P95_S:g} s")
        ax.set_xticks(range(len(rows)), labels)
        ax.set_xlabel("background load")
        ax.set_ylabel("send -> counted by /api/v1/summary, s")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, axis="y")
        bottoms = [0.0] * len(rows)
        colors = ("#8c8c8c", "#4c72b0", "#55a868", "#c44e52", "#8172b2", "#ccb974")
        for step, color in zip(STEPS, colors, strict=True):
            heights = [r.get("median_breakdown", {}).get("steps_s", {}).get(step, 0) for r in rows]
            bx.bar(range(len(rows)), heights, 0.5, bottom=bottoms, label=step, color=color)
            bottoms = [b + h for b, h in zip(bottoms, heights, strict=True)]
        bx.axhline(TARGET_P95_S, color="red", linestyle="--", label=f"p95 target {TARGET_P95_S:g} s")
        bx.set_xticks(range(len(rows)), labels)
        bx.set_ylabel("median of each step, s")
        bx.set_title("where a probe's time goes (medians)", fontsize=9)
        bx.legend(fontsize=8)
        bx.grid(alpha=0.3, axis="y")


def measure_load(load: int, probes: int, ctx: dict, bar: tqdm) -> dict:
    """Probe the pipeline at one background load; one row of the result."""
    procs, tracer, probe_count = ctx["procs"], ctx["tracer"], ctx["probe_count"]
    bar.set_postfix_str(f"load {load:,}/s: settling")
    load_procs = ctx["load_procs"] = start_load(ctx["udp_port"], load)
    before = collector_counts(ctx["data_dir"])
    time.sleep(SETTLE_S)
    bar.set_postfix_str(f"load {load:,}/s")
    ctx["rss"].take()
    cpu_before = {name: cpu_seconds(proc.pid) for name, proc in procs.items()}
    started = time.time()
    latencies: list[float] = []
    traces: list[dict] = []
    lost = 0
    for i in range(probes):
        service = f"probe-{load}-{i}"  # one service per probe: a probe seen late never passes for the next one
        time.sleep(ctx["rng"].uniform(0.05, 0.55))  # a random phase within the 0.5 s segment and trigger periods
        sent = time.time()
        ctx["sock"].sendto(probe_message(service, sent), ("127.0.0.1", ctx["udp_port"]))
        while not probe_count(service):
            if time.time() - sent > PROBE_TIMEOUT_S:
                lost += 1
                break
            time.sleep(POLL_S)
        else:
            visible = time.time()
            latencies.append(visible - sent)
            try:
                trace = tracer.breakdown(service, sent, visible)
            except (OSError, ValueError, KeyError):  # a checkpoint file renamed or compacted away while read: untraced
                trace = None
            if trace is not None:
                traces.append(trace)
        bar.update(1)
    elapsed = time.time() - started
    cores = {name: round((cpu_seconds(proc.pid) - cpu_before[name]) / elapsed, 2) for name, proc in procs.items()}
    peak_rss = ctx["rss"].take()
    sent_load = stop_load(load_procs)
    ctx["load_procs"] = []
    time.sleep(2)  # the collector reads what is queued
    after = collector_counts(ctx["data_dir"])
    received = after["received"] - before["received"] - probes  # the probes went to the collector too
    row = {"load_per_s": load, "offered_per_s": round(sent_load["sent"] / sent_load["seconds"]), "probes": len(latencies),
           "lost_probes": lost, "cpu_cores_used": cores, "peak_rss_mb": peak_rss,
           "collector_received_of_sent": round(received / sent_load["sent"], 5) if sent_load["sent"] else None,
           "loadavg_1m_after": round(os.getloadavg()[0], 2)}
    if latencies:
        row.update(p50_s=round(statistics.median(latencies), 3), p95_s=round(percentile(latencies, 0.95), 3),
                   p99_s=round(percentile(latencies, 0.99), 3), max_s=round(max(latencies), 3))
        row["p95_over_target"] = round(row["p95_s"] / TARGET_P95_S, 2)
    row["median_breakdown"] = median_breakdown(traces)
    row["traces"] = traces
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probes", type=int, default=40, help="probes per load")
    parser.add_argument("--loads", default=",".join(map(str, DEFAULT_LOADS)), help="background msg/s, comma-separated")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="NAME=VALUE", help="a setting for every process")
    parser.add_argument("--history-hours", type=int, default=0, help="hours of raw history landed below a batch horizon first")
    parser.add_argument("--out", default="freshness", help="result name: bench/results/<out>.json and .png")
    args = parser.parse_args()
    loads = [int(x) for x in args.loads.split(",")]
    settings = dict(item.partition("=")[::2] for item in (*DEFAULT_SETTINGS, *args.overrides))

    udp_port, api_port = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_STREAM)
    data_dir = Path(tempfile.mkdtemp(prefix="healthmon-bench-"))
    env = {"HEALTHMON_DATA_DIR": str(data_dir), "HEALTHMON_UDP_PORT": str(udp_port), "HEALTHMON_API_PORT": str(api_port)}
    env.update({f"HEALTHMON_{name.upper()}": value for name, value in settings.items()})
    api = f"http://127.0.0.1:{api_port}"
    machine = common_machine()
    history = land_history(data_dir, env, args.history_hours) if args.history_hours else None
    procs = {part: start_healthmon([part], env) for part in PARTS}
    rss = PeakRss({part: proc.pid for part, proc in procs.items()})
    rss.start()
    session = requests.Session()

    def probe_count(service: str) -> int:
        now = time.time()
        answer = session.get(f"{api}/api/v1/summary", params={"service": service, "from": now - 3600, "to": now + 60}, timeout=5)
        return answer.json()["services"][0]["count"] if answer.status_code == 200 and answer.json()["services"] else 0

    ctx = {"procs": procs, "tracer": Tracer(data_dir), "probe_count": probe_count, "udp_port": udp_port, "data_dir": data_dir,
           "sock": socket.socket(socket.AF_INET, socket.SOCK_DGRAM), "rng": random.Random(5), "rss": rss, "load_procs": []}
    rows = []
    try:
        wait_until(lambda: session.get(f"{api}/healthz", timeout=1).ok, 60, "API up")
        # Warm-up: the first micro-batches after a start are slow; wait until the speed layer keeps up.
        ctx["sock"].sendto(probe_message("probe-warmup", time.time()), ("127.0.0.1", udp_port))
        wait_until(lambda: probe_count("probe-warmup") == 1, 180, "speed layer warm")
        with tqdm(total=len(loads) * args.probes, desc="freshness probes", unit="probe") as bar:
            for load in loads:
                rows.append(measure_load(load, args.probes, ctx, bar))
    finally:
        for proc in ctx["load_procs"]:
            proc.kill()
        for proc in procs.values():
            stop_process(proc)
        rss.done.set()
        shutil.rmtree(data_dir, ignore_errors=True)
    machine["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result = {"bench": "freshness", "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": machine,
              "settings": [f"{k}={v}" for k, v in settings.items()], "history": history, "probes_per_load": args.probes,
              "target_p95_s": TARGET_P95_S,
              "loads": rows, "met": all(r.get("p95_s", float("inf")) <= TARGET_P95_S and not r["lost_probes"] for r in rows)}
    write_results(result, RESULTS / f"{args.out}.json", chart)
    print(f"{'load/s':>8} {'offered/s':>10} {'p50 s':>6} {'p95 s':>6} {'p99 s':>6} {'p95/tgt':>7} {'lost':>5}  "
          f"{'recv/sent':>9}  cores c/s/a     peak RSS MB c/s/a")
    for r in rows:
        c, m = r["cpu_cores_used"], r["peak_rss_mb"]
        print(f"{r['load_per_s']:>8} {r['offered_per_s']:>10} {r.get('p50_s', '-'):>6} {r.get('p95_s', '-'):>6} {r.get('p99_s', '-'):>6} "
              f"{r.get('p95_over_target', '-'):>7} {r['lost_probes']:>5}  {r['collector_received_of_sent']:>9}  "
              f"{c['collect']}/{c['speed']}/{c['serve']}  {m['collect']}/{m['speed']}/{m['serve']}")
    print("median breakdown, s: " + " | ".join(STEPS))
    for r in rows:
        steps = r["median_breakdown"].get("steps_s", {})
        print(f"{r['load_per_s']:>8}: " + " | ".join(f"{steps.get(s, float('nan')):.3f}" for s in STEPS)
              + f"   (Spark ms: {r['median_breakdown'].get('spark_ms', {})})")
    print(f"p95 target {TARGET_P95_S:g} s: {'met at every load' if result['met'] else 'MISSED at some load'}; load average "
          f"{machine['loadavg_at_start'][0]:.2f} -> {machine['loadavg_at_end'][0]:.2f}; results: bench/results/{args.out}.json, .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
