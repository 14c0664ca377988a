"""Batch benchmark: Spark against DuckDB alone, an incremental build against a full one, and growth with the data.

    python bench/batch.py [--services 25] [--scales 1,2,4] [--hours 24] [--segment-s 10] [--repeats 5]

The data, 1×: a fleet-day, 25 services × 24 hours × 1 health message/s =
2.16 M messages, 485 MB of landed JSON lines (4× is 100 services, the fleet
of the query benchmark: 8.6 M messages, 1.9 GB).  Big enough that Spark's
fixed cost per job (planning, scheduling, a second or two) is a small part
of a full build, small enough that the record run (1×, 2×, 4×, landing
included) takes about 6.5 minutes on 2 cores.

For each scale k (``--scales``), in a fresh data directory:

1. Lands ``--hours`` hours of raw health data for ``k × --services`` services
   at 1 msg/s each, in the collector's own format and layout
   (``healthmon.schema.landed_line`` lines, at ``healthmon.landing.raw_segment_path``,
   one segment per ``--segment-s`` seconds: 8,640 files a day whatever the
   scale, so growth is about data, not file count), one process per core.
2. Full build: the real ``batch_jobs.build.build`` on an empty view, with a
   clock at which every landed hour is closed (raw -> master Parquet ->
   minute windows -> rollups -> clustered rows -> published view).
3. A build with nothing changed (its fixed cost: listing, copying the view).
4. Incremental build: a late segment (1 % more messages) lands in hour 5,
   and the next build rebuilds that one hour of the 24.  Its time over the
   full build's is the incremental ratio (target ≤ 1/10).
5. The same aggregation (master Parquet -> the minute windows of
   ``healthmon.views.HEALTH``) by Spark (``batch_jobs.transforms.health_windows``,
   the build's own transform, collected to Arrow as the build does) and by
   DuckDB alone (one SQL query over ``read_parquet``), the median of
   ``--repeats`` runs each taken in turns, on a warm Spark session; both answers must be
   equal.  Spark's time over DuckDB's is the ratio (target ≤ 3); their CPU
   seconds (this process, the Spark JVM) are recorded too, being less sensitive
   than wall time to what else the machine runs.  Also, for
   reference, DuckDB alone from the raw JSON lines (deduplicated by id) to
   the windows, i.e. the whole of what the build's Spark job does.
6. The rewrite of the window table in its clustered order
   (``batch_jobs.build.cluster_windows``, part of the full build; a running
   system does it every 6 hours).

How build time grows with the data: the full build (and each step) at 1×,
2×, 4×.  Spark runs ``local[*]`` with the project's settings, in one session
warmed up by a small unmeasured build first (the scheduler keeps its session
for every build); DuckDB with its default threads (all cores).  Results go to
``bench/results/batch.json`` with the load average at start and end, the chart
(each ratio against its target, and time against data) to
``bench/results/batch.png``.  The record run took 390 s on a quiet 2-core
machine.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tqdm import tqdm  # noqa: E402

from bench.common import CpuWatch, figure, machine, write_results  # noqa: E402
from healthmon.config import load_settings  # noqa: E402
from healthmon.landing import HOUR_S, landing_for, master_dir, raw_dir, raw_segment_path  # noqa: E402
from healthmon.schema import HEALTH_METRICS, landed_line  # noqa: E402
from healthmon.views import BATCH_VIEW, HEALTH  # noqa: E402

RESULTS_DIR = REPO / "bench" / "results"
TARGET_SPARK_OVER_DUCKDB = 3.0
TARGET_INCREMENTAL_OVER_FULL = 0.1
T0 = 1767225600  # 2026-01-01T00:00:00Z: the landed hours start here
LATE_HOUR = 5  # the hour that gets late data for the incremental build
LATE_SHARE = 0.01  # late messages, as a share of that hour's
WARM_UP_HOURS = 2  # landed hours of the unmeasured warm-up build


# ---------------------------------------------------------------- raw data


POOL = 4099
"""Values drawn per service, then cycled: drawing each message's values would take most of the landing time."""


def service_profiles(services: int, seed: int) -> list[dict]:
    """Each service's fixed fields and pools of drawn values (CPU, free RAM) around its own level."""
    rng = random.Random(seed)
    profiles = []
    for i in range(services):
        cpu, ram_total, ram_used = rng.uniform(5, 70), rng.choice((8, 16, 32, 64)), rng.uniform(0.2, 0.8)
        disk_total, disk_used = rng.choice((128, 256, 512)), rng.uniform(0.1, 0.7)
        profiles.append({
            "service": f"svc-{i:03d}", "host": f"host-{i % 20:02d}", "ram_total_gb": ram_total, "disk_total_gb": disk_total,
            "disk_free_gb": round(disk_total * (1 - disk_used), 4),
            "cpu_pct": [round(min(100.0, max(0.0, rng.gauss(cpu, 8))), 3) for _ in range(POOL)],
            "ram_free_gb": [round(ram_total * (1 - ram_used) + rng.uniform(-0.5, 0.5), 4) for _ in range(POOL)],
        })
    return profiles


JITTER = [round(random.Random(0).random(), 6) for _ in range(POOL)]
"""Sub-second send times, cycled like the profiles' pools."""


def health_lines(profiles: list[dict], start: int, seconds: int, id_prefix: str, first_id: int) -> bytes:
    """Landed lines of every service's 1 msg/s over ``[start, start + seconds)``, as the collector writes them."""
    lines = []
    n = first_id
    for second in range(start, start + seconds):
        for p in profiles:
            k = n % POOL
            ts = second + JITTER[k]
            message = {"type": "health", "service": p["service"], "ts": ts, "cpu_pct": p["cpu_pct"][k], "ram_total_gb": p["ram_total_gb"],
                       "ram_free_gb": p["ram_free_gb"][k], "disk_total_gb": p["disk_total_gb"], "disk_free_gb": p["disk_free_gb"],
                       "host": p["host"]}
            lines.append(landed_line(message, f"{id_prefix}{n}", round(ts + 0.05, 6)))
            n += 1
    return b"".join(lines)


def write_segment(root: Path, path: str, data: bytes) -> None:
    """A segment at its landing path.  Not ``LandingStore.publish``: its fsync per file would take most of the landing
    time, and nothing reads the directory while it is filled."""
    target = root / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)


def land_hour(task: tuple) -> tuple[int, int, int]:
    """One hour of segments (a worker process's share of ``land_raw``); (messages, files, bytes)."""
    root, services, seed, hour, segment_s = task
    profiles = service_profiles(services, seed)
    start = T0 + hour * HOUR_S
    messages = files = size = 0
    for seg_start in range(start, start + HOUR_S, segment_s):
        first_id = (seg_start - T0) * services
        data = health_lines(profiles, seg_start, segment_s, "c1-1-", first_id)
        write_segment(root, raw_segment_path("health", seg_start, f"c1-1-{(seg_start - T0) // segment_s:06d}"), data)
        messages, files, size = messages + services * segment_s, files + 1, size + len(data)
    return messages, files, size


def land_raw(root: Path, services: int, hours: int, segment_s: int, seed: int, bar=None) -> dict:
    """``hours`` hours of 1 msg/s from ``services`` services under landing root ``root``, one segment per ``segment_s``
    seconds, landed by one worker process per core."""
    tasks = [(root, services, seed, hour, segment_s) for hour in range(hours)]
    messages = files = size = 0
    with multiprocessing.get_context("fork").Pool(os.cpu_count()) as pool:
        for m, f, b in pool.imap_unordered(land_hour, tasks):
            messages, files, size = messages + m, files + f, size + b
            if bar is not None:
                bar.update()
    return {"messages": messages, "files": files, "bytes": size}


def land_late(root: Path, services: int, seed: int) -> int:
    """A late segment in hour ``LATE_HOUR``: ``LATE_SHARE`` more messages, from another collector run."""
    profiles = service_profiles(services, seed)
    seconds = max(1, round(HOUR_S * LATE_SHARE))
    start = T0 + LATE_HOUR * HOUR_S + 600
    write_segment(root, raw_segment_path("health", start, "c1-2-000000"), health_lines(profiles, start, seconds, "c1-2-", 0))
    return services * seconds


# ---------------------------------------------------------------- the aggregations


def duckdb_windows_sql(source: str, window_s: int) -> str:
    """DuckDB SQL computing ``batch_jobs.transforms.health_windows`` over the rows of ``source`` (same columns, same order)."""
    measures = (
        "service, ts, cpu_pct::DOUBLE AS cpu_pct, "
        "CASE WHEN ram_total_gb > 0 THEN (ram_total_gb - ram_free_gb) / ram_total_gb * 100.0 ELSE 0.0 END AS ram_used_pct, "
        "CASE WHEN disk_total_gb > 0 THEN (disk_total_gb - disk_free_gb) / disk_total_gb * 100.0 ELSE 0.0 END AS disk_used_pct"
    )
    aggs = ["count(*)::BIGINT AS count"]
    for m in HEALTH_METRICS:
        aggs += [f"sum({m}) AS {m}_sum", f"min({m}) AS {m}_min", f"max({m}) AS {m}_max", f"arg_max({m}, ts) AS {m}_last"]
    aggs.append("max(ts) AS last_ts")
    return (f"SELECT service, (floor(ts / {window_s}) * {window_s})::BIGINT AS window_start, {', '.join(aggs)} "
            f"FROM (SELECT {measures} FROM {source}) GROUP BY service, window_start")


def duckdb_from_master(root: Path, window_s: int):
    import duckdb

    con = duckdb.connect()
    try:
        source = f"read_parquet('{root / master_dir('health')}/*/*/*.parquet')"
        return con.execute(duckdb_windows_sql(source, window_s)).to_arrow_table()
    finally:
        con.close()


def duckdb_from_raw(root: Path, window_s: int):
    """Raw JSON lines -> one row per message id -> windows: what the build's Spark job does, in DuckDB alone."""
    import duckdb

    from healthmon.schema import duckdb_columns

    con = duckdb.connect()
    try:
        columns = "{" + ", ".join(f"'{k}': '{v}'" for k, v in duckdb_columns("health").items()) + "}"
        lines = f"read_json('{root / raw_dir('health')}/*/*/*.jsonl', format='newline_delimited', columns={columns})"
        source = f"(SELECT * FROM {lines} QUALIFY row_number() OVER (PARTITION BY id) = 1)"
        return con.execute(duckdb_windows_sql(source, window_s)).to_arrow_table()
    finally:
        con.close()


def spark_from_master(spark, store, window_s: int):
    from batch_jobs.transforms import health_windows

    return health_windows(spark.read.parquet(store.uri(master_dir("health"))), window_s).toArrow()


def same_windows(a, b) -> bool:
    """Two window tables hold the same rows: keys and counts exactly, every DOUBLE to 1e-9 (sums may add in another order)."""
    import math

    key = [("service", "ascending"), ("window_start", "ascending")]
    a, b = a.select(list(HEALTH.columns)).sort_by(key), b.select(list(HEALTH.columns)).sort_by(key)
    if a.num_rows != b.num_rows:
        return False
    doubles = {column for column, kind, _merge in HEALTH.aggs if kind == "DOUBLE"}
    for column in HEALTH.columns:
        xs, ys = a.column(column).to_pylist(), b.column(column).to_pylist()
        same = (all(math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-9) for x, y in zip(xs, ys, strict=True)) if column in doubles
                else xs == ys)
        if not same:
            return False
    return True


def timed(fn, repeats: int = 1) -> tuple[float, object]:
    """Median seconds of ``repeats`` calls, and the last result."""
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def view_windows(view: Path) -> tuple[int, int]:
    """(window rows, messages counted) of the batch view."""
    import duckdb

    con = duckdb.connect(str(view), read_only=True)
    try:
        rows, count = con.execute("SELECT count(*), sum(count) FROM health_window").fetchone()
        return int(rows), int(count)
    finally:
        con.close()


def time_clustering(view: Path, work: Path) -> float:
    """Seconds to rewrite the window table of (a copy of) the view in its clustered order."""
    import duckdb

    from batch_jobs.build import cluster_windows

    copy = work / "cluster-copy.duckdb"
    shutil.copyfile(view, copy)
    con = duckdb.connect(str(copy))
    try:
        started = time.perf_counter()
        cluster_windows(con, HEALTH)
        con.execute("CHECKPOINT")
        return time.perf_counter() - started
    finally:
        con.close()
        copy.unlink(missing_ok=True)


# ---------------------------------------------------------------- one scale


def warm_up(spark, args) -> float:
    """A small full build (``WARM_UP_HOURS`` hours of the 1× fleet) and aggregations on a fresh session, unmeasured:
    the JVM compiles Spark's code paths in its first jobs, which would otherwise slow the first scale only.  Returns
    its seconds."""
    from batch_jobs.build import build

    root = Path(tempfile.mkdtemp(prefix="healthmon-bench-batch-warmup-"))
    try:
        settings = load_settings({"data_dir": str(root)}, environ={})
        store = landing_for(settings)
        land_raw(store.root, args.services, WARM_UP_HOURS, args.segment_s, seed=0)
        started = time.perf_counter()
        build(spark, settings, store, now=T0 + WARM_UP_HOURS * HOUR_S + settings.batch_lateness_s + 1)
        for _ in range(WARM_UP_HOURS):
            spark_from_master(spark, store, settings.window_s)
        return time.perf_counter() - started
    finally:
        shutil.rmtree(root, ignore_errors=True)


STEPS = ("full build", "unchanged build", "incremental build", "Spark aggregation", "DuckDB aggregation",
         "DuckDB from raw", "clustering")  # progress steps of one scale, after one per landed hour


def bench_scale(spark, scale: int, args, bar) -> dict:
    from batch_jobs.build import build

    services = scale * args.services
    root = Path(tempfile.mkdtemp(prefix=f"healthmon-bench-batch-{scale}x-"))
    try:
        settings = load_settings({"data_dir": str(root)}, environ={})
        store = landing_for(settings)
        now = T0 + args.hours * HOUR_S + settings.batch_lateness_s + 1  # every landed hour is closed

        def step(name: str) -> None:
            bar.set_postfix_str(f"{scale}×: {name}")

        watch = CpuWatch()

        step("land raw")
        landed = land_raw(store.root, services, args.hours, args.segment_s, seed=scale, bar=bar)
        step("full build")
        full_s, full = timed(lambda: build(spark, settings, store, now=now))
        bar.update()
        step("unchanged build")
        unchanged_s, unchanged = timed(lambda: build(spark, settings, store, now=now))
        bar.update()
        step("incremental build")
        late = land_late(store.root, services, seed=scale)
        incremental_s, incremental = timed(lambda: build(spark, settings, store, now=now))
        bar.update()
        rows, counted = view_windows(settings.views_dir / BATCH_VIEW)
        if counted != landed["messages"] + late or full["hours_rebuilt"] != args.hours or incremental["hours_rebuilt"] != 1:
            raise RuntimeError(f"{scale}×: the view counts {counted} messages of {landed['messages'] + late}; "
                               f"hours rebuilt {full['hours_rebuilt']} then {incremental['hours_rebuilt']}")
        step("Spark and DuckDB aggregations")
        # Taken in turns, so that whatever else the machine does slows both alike.
        spark_times, duck_times, spark_cpu, duck_cpu = [], [], [], []
        for _ in range(args.repeats):
            cpu0 = CpuWatch.ours()
            seconds, spark_rows = timed(lambda: spark_from_master(spark, store, settings.window_s))
            cpu1 = CpuWatch.ours()
            spark_times.append(seconds)
            seconds, duck_rows = timed(lambda: duckdb_from_master(root / "landing", settings.window_s))
            duck_times.append(seconds)
            spark_cpu.append(cpu1 - cpu0)
            duck_cpu.append(CpuWatch.ours() - cpu1)
        spark_s, duck_s = statistics.median(spark_times), statistics.median(duck_times)
        bar.update(2)
        if not same_windows(spark_rows, duck_rows):
            raise RuntimeError(f"{scale}×: Spark and DuckDB disagree on the windows")
        step("DuckDB from raw")
        duck_raw_s, duck_raw_rows = timed(lambda: duckdb_from_raw(root / "landing", settings.window_s))
        if not same_windows(duck_raw_rows, duck_rows):
            raise RuntimeError(f"{scale}×: DuckDB from raw and from master disagree")
        bar.update()
        step("clustering")
        cluster_s = time_clustering(settings.views_dir / BATCH_VIEW, root)
        bar.update()
        cpu = watch.stop()
        return {
            "scale": scale, "services": services, "hours": args.hours, "landed": landed, "late_messages": late,
            "window_rows": rows, "master_bytes": sum(p.stat().st_size for p in (root / "landing" / "master").rglob("*.parquet")),
            "full_build_s": round(full_s, 2), "unchanged_build_s": round(unchanged_s, 2), "incremental_build_s": round(incremental_s, 2),
            "incremental_over_full": round(incremental_s / full_s, 3),
            "spark_aggregation_s": round(spark_s, 3), "duckdb_aggregation_s": round(duck_s, 3),
            "spark_aggregation_runs_s": [round(t, 3) for t in spark_times], "duckdb_aggregation_runs_s": [round(t, 3) for t in duck_times],
            "spark_over_duckdb": round(spark_s / duck_s, 2),
            # CPU seconds (this process and the Spark JVM): less sensitive than wall time to what else the machine runs
            "spark_aggregation_cpu_s": round(statistics.median(spark_cpu), 3),
            "duckdb_aggregation_cpu_s": round(statistics.median(duck_cpu), 3),
            "spark_over_duckdb_cpu": round(statistics.median(spark_cpu) / statistics.median(duck_cpu), 2),
            "duckdb_from_raw_s": round(duck_raw_s, 3), "clustering_s": round(cluster_s, 3),
            "full_build_msgs_per_s": round(landed["messages"] / full_s),
            "builds": {"full": full, "unchanged": unchanged, "incremental": incremental}, "cpu": cpu,
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------- report


def ratio_panel(ax, rows: list[dict], labels: list[str], key: str, target: float, color: str, note, ylabel: str, title: str) -> None:
    """Bars of ``key`` per scale, each with its ``note(row)``, against the target as a dashed line."""
    xs = range(len(rows))
    ratios = [r[key] for r in rows]
    ax.bar(xs, ratios, color=color)
    for x, r in zip(xs, rows, strict=True):
        ax.text(x, r[key], note(r), ha="center", va="bottom", fontsize=8)
    ax.axhline(target, color="crimson", linestyle="--", label=f"target ≤ {target:g}")
    ax.set_xticks(list(xs), labels)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.set_ylim(0, max([*ratios, target]) * 1.3)
    ax.legend(fontsize=8)


def chart(result: dict, path: Path) -> None:
    rows = result["scales"]
    labels = [f"{r['scale']}×\n{r['landed']['messages'] / 1e6:.2f}M msgs" for r in rows]
    load = result["machine"]["loadavg_at_start"][0]
    title = f"healthmon batch bench, {result['at']}, {result['machine']['cpus']} CPUs, load average {load:.1f} at start"
    with figure(path, title, 1, 3, figsize=(16, 5)) as (_plt, _fig, axes):
        ratio_panel(axes[0], rows, labels, "spark_over_duckdb", TARGET_SPARK_OVER_DUCKDB, "#6baed6",
                    lambda r: f"{r['spark_over_duckdb']:.1f}\n({r['spark_aggregation_s']:.1f} s / {r['duckdb_aggregation_s']:.2f} s)",
                    "Spark time / DuckDB time", "Master -> minute windows: Spark / DuckDB")
        ratio_panel(axes[1], rows, labels, "incremental_over_full", TARGET_INCREMENTAL_OVER_FULL, "#74c476",
                    lambda r: f"{r['incremental_over_full']:.2f}\n({r['incremental_build_s']:.1f} s / {r['full_build_s']:.1f} s)",
                    "incremental build time / full build time", f"1 of {result['params']['hours']} hours changed / full build")

        ax = axes[2]
        scales = [r["scale"] for r in rows]
        base = rows[0]
        for key, name, color in (("full_build_s", "full build", "#08519c"),
                                 ("incremental_build_s", "incremental build", "#31a354"),
                                 ("unchanged_build_s", "unchanged build", "#969696"),
                                 ("spark_aggregation_s", "Spark aggregation", "#6baed6"),
                                 ("duckdb_aggregation_s", "DuckDB aggregation", "#fd8d3c")):
            ax.plot(scales, [r[key] for r in rows], marker="o", color=color, label=name)
        linear = [base["full_build_s"] * s / base["scale"] for s in scales]
        ax.plot(scales, linear, linestyle=":", color="#08519c", label="full build, linear")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(scales, [f"{s}×" for s in scales])
        ax.set_xlabel("data (× base)")
        ax.set_ylabel("seconds (log)")
        ax.set_title("Growth with the data")
        ax.legend(fontsize=8)


def print_table(result: dict) -> None:
    header = (f"{'scale':>5} {'messages':>10} {'full s':>7} {'unchgd s':>8} {'incr s':>7} {'incr/full':>9} | "
              f"{'Spark s':>7} {'DuckDB s':>8} {'Spark/DuckDB':>12} {'(CPU s)':>7} | "
              f"{'Duck raw s':>10} {'cluster s':>9} {'msgs/s (full)':>13}")
    print(header)
    print("-" * len(header))
    for r in result["scales"]:
        print(f"{r['scale']:>4}× {r['landed']['messages']:>10} {r['full_build_s']:>7} {r['unchanged_build_s']:>8} "
              f"{r['incremental_build_s']:>7} {r['incremental_over_full']:>9} | {r['spark_aggregation_s']:>7} "
              f"{r['duckdb_aggregation_s']:>8} {r['spark_over_duckdb']:>12} {r['spark_over_duckdb_cpu']:>7} | "
              f"{r['duckdb_from_raw_s']:>10} {r['clustering_s']:>9} "
              f"{r['full_build_msgs_per_s']:>13}   (other processes: {r['cpu']['others_cores']} cores)")
    print(f"targets: Spark/DuckDB ≤ {TARGET_SPARK_OVER_DUCKDB:g}, incremental/full ≤ {TARGET_INCREMENTAL_OVER_FULL:g}; "
          f"full build time over the first scale's: " + ", ".join(f"{k} {v}" for k, v in result["growth"].items()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=25, help="services at scale 1× (1 msg/s each)")
    parser.add_argument("--scales", default="1,2,4", help="data scales, comma-separated (× --services)")
    parser.add_argument("--hours", type=int, default=24, help="landed hours")
    parser.add_argument("--segment-s", type=int, default=10, help="seconds of messages per landed segment file (divides 3600)")
    parser.add_argument("--repeats", type=int, default=5, help="runs of each aggregation, in turns (the median counts)")
    parser.add_argument("--out", default=str(RESULTS_DIR / "batch.json"), help="results JSON (the chart goes beside it, .png)")
    args = parser.parse_args()
    if HOUR_S % args.segment_s or args.hours <= LATE_HOUR:
        parser.error(f"--segment-s must divide 3600 and --hours be more than {LATE_HOUR}")

    from healthmon.spark import spark_session

    scales = [int(s) for s in args.scales.split(",")]
    info = machine()
    spark_dir = Path(tempfile.mkdtemp(prefix="healthmon-bench-spark-"))
    print("starting Spark ...", flush=True)
    started = time.perf_counter()
    spark = spark_session(load_settings({"data_dir": str(spark_dir)}, environ={}), "healthmon-bench-batch")
    spark_start_s = round(time.perf_counter() - started, 2)
    rows = []
    try:
        with tqdm(total=1 + len(scales) * (args.hours + len(STEPS)), unit="step", desc="batch bench") as bar:
            bar.set_postfix_str("warm-up build")
            warmup_s = warm_up(spark, args)
            bar.update()
            for scale in scales:
                rows.append(bench_scale(spark, scale, args, bar))
        info["spark_version"] = spark.version
    finally:
        spark.stop()
        shutil.rmtree(spark_dir, ignore_errors=True)
    import duckdb

    info["duckdb_version"] = duckdb.__version__
    base = rows[0]
    result = {
        "bench": "batch", "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": info, "loadavg_at_end": os.getloadavg(),
        "params": {"services_1x": args.services, "scales": scales, "hours": args.hours, "segment_s": args.segment_s,
                   "repeats": args.repeats, "late_hour": LATE_HOUR, "late_share": LATE_SHARE},
        "spark_session_start_s": spark_start_s, "warmup_build_s": round(warmup_s, 2),
        "targets": {"spark_over_duckdb": TARGET_SPARK_OVER_DUCKDB, "incremental_over_full": TARGET_INCREMENTAL_OVER_FULL},
        "scales": rows,
        # full build time at each scale over the first scale's
        "growth": {f"{r['scale']}x": round(r["full_build_s"] / base["full_build_s"], 2) for r in rows},
    }
    print()
    print_table(result)
    out = Path(args.out)
    write_results(result, out, chart)
    print(f"load average: {info['loadavg_at_start'][0]:.2f} at start, {result['loadavg_at_end'][0]:.2f} at end; "
          f"Spark session start {spark_start_s} s")
    print(f"results: {out}, chart: {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
