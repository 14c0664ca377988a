"""Query benchmark: summary and series over 7 days × 100 services, 16 concurrent clients.

    python bench/query.py [--days 7] [--services 100] [--clients 16] [--saturated-seconds 30] [--paced-seconds 0]
                          [--wrk-seconds 30] [--set NAME=VALUE] [--versus-tree DIR] [--versus-set NAME=VALUE] [--rounds 1]

(the record: ``python bench/query.py --paced-rate 160 --paced-seconds 30``, about 3 minutes on an idle
machine; two server processes against one, by turns, about 4 minutes: ``python bench/query.py
--baseline-seconds 10 --paced-rate 160 --paced-seconds 15 --saturated-seconds 15 --wrk-seconds 15
--set api_processes=2 --versus-set api_processes=1``)

1. Builds the views in a temporary data directory: a batch view of ``--days``
   days × ``--services`` services at 1 msg/s (minute windows of count 60,
   generated in DuckDB SQL straight into the ``healthmon.views.HEALTH``
   tables) with the hour and day rollups of the batch build's own
   ``refresh_rollups``, its rows stored as the batch build leaves them
   (``batch_jobs.build.cluster_windows``: clustered up to the last 6-hour
   block the horizon entered, the hours since appended after them); and a
   real-time view of the last hour.  The horizon is the hour of
   ``now - batch_lateness_s``, as a build now would set it.
2. Starts a real ``healthmon serve`` (default settings: ``api_threads`` 8)
   over it.
3. Drives it with client processes, each with one keep-alive HTTP connection
   (``http.client``).  Each request is drawn uniformly from the mix below, for
   a random service, with ``to`` = the client's clock and ``from`` = ``to`` -
   the range:

   ============== ======================================================
   summary_1h     ``/api/v1/summary`` over the last hour (all services)
   summary_24h    over the last 24 hours
   summary_7d     over the last 7 days
   series_1h_60s  ``/api/v1/services/<s>/series``, last hour, step 60s
   series_24h_5m  last 24 hours, step 5m
   series_7d_1h   last 7 days, step 1h
   series_7d_5m   last 7 days, step 5m (2,017 points)
   ============== ======================================================

   While the bench runs, ``RealtimePublisher`` publishes a new real-time
   view file every ``speed_trigger_s`` (0.5 s) with the windows time has
   reached, as the speed layer does: the API's answers that read the
   real-time view are recomputed that often, as in production.

   First a ``cold`` pass: every distinct query once (the three summaries,
   each series over every service), one after another: what the first
   reader of each waits right after a batch build published a new file,
   when nothing is cached (``serving.queries.BatchCache``).  Then the
   measured phases, each after ``--warmup`` unmeasured seconds:

   - ``baseline``: one client, closed loop (the next request as soon as the
     answer is read): the time a query takes with nothing queued before it.
   - ``paced`` (off unless ``--paced-seconds``): ``--clients`` clients sending ``--paced-rate`` requests/s in
     all, each at random (Poisson) times; a request's latency counts from
     the time it was due, so one stuck behind a slow answer is charged its
     wait too.
   - ``saturated``: ``--clients`` clients in a closed loop: the most requests/s
     the server gives, and the latency then.  This is the issue's figure.
   - ``wrk`` (off with ``--wrk-seconds 0``): the same closed loop from
     ``wrk`` (``-c --clients -t --wrk-threads``, Debian's wrk 4.1.0) with a
     Lua script the bench writes: the same mix, ``to`` = wrk's clock (whole
     seconds), every answer that is not a 2xx counted (the bench fails on
     any).  A load generator in C takes ~0.1 core where the Python clients
     take most of one (``generator_cpu_cores``): the server's figures with
     less of the machine taken from it.  Overall figures only (wrk keeps one
     latency histogram).

``--versus-tree DIR`` (a source tree, e.g. ``git archive HEAD | tar -x -C
DIR``) and/or ``--versus-set NAME=VALUE``: a second server over the same
views, with that code or those settings; each phase runs on both by turns,
and a table of ratios (this / compared) ends the output: old against new
code, or ``api_processes`` 2 against 1, measured under the same load.  ``--rounds N`` splits each
phase into N rounds, the two servers by turns in each (the other one first every other round), and
merges each server's rounds (wrk's figures: the median round): on a shared machine a burst of other
work then falls on both instead of on one server's whole phase.  With
``api_processes`` > 1 every process has its own cache, so the bench warms
each (``warm_every_process``) after the cold pass, and the server's own
mean times are left out (``/metrics`` is the answering process's).

Every answer must be a 200 (and before the run one answer of each kind is
checked for its counts).  Printed per phase and query type: requests, req/s,
p50/p95/p99 and p99 / target (20 ms), the server's own mean time per
endpoint (from its ``/metrics`` histogram) and its view switches
(``healthmon_api_view_switch_seconds``: from noticing a new view file to
requests reading it, the answers prepared; this adds to freshness).  Results go to
``bench/results/query.json``, the chart to ``bench/results/query.png``.

Clients and server share the machine (2 cores here): the client processes
(``http.client``, one keep-alive connection each) take CPU from the server,
reported as ``cpu.ours_cores`` beside ``server_cpu_cores``.  In the closed
loop the mean latency is clients / throughput (Little's law), whatever the
query costs: 16 clients get 20 ms only from a server answering 800
requests/s.  The machine load (``os.getloadavg``) at start and end is in the
JSON and on the chart.
"""

from __future__ import annotations

import argparse
import functools
import http.client
import math
import multiprocessing
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import CpuWatch, figure, machine, tree_cpu_s, write_results  # noqa: E402

RESULTS_DIR = REPO / "bench" / "results"
TARGET_P99_MS = 20.0
HOUR = 3600
DAY = 86400
WINDOW = 60
MSGS_PER_WINDOW = 60  # 1 msg/s per service

# name -> (endpoint, range in seconds, step or None)
MIX: dict[str, tuple[str, int, str | None]] = {
    "summary_1h": ("summary", HOUR, None),
    "summary_24h": ("summary", DAY, None),
    "summary_7d": ("summary", 7 * DAY, None),
    "series_1h_60s": ("series", HOUR, "60s"),
    "series_24h_5m": ("series", DAY, "5m"),
    "series_7d_1h": ("series", 7 * DAY, "1h"),
    "series_7d_5m": ("series", 7 * DAY, "5m"),
}
KINDS = tuple(MIX)


def service_name(i: int) -> str:
    return f"svc-{i:03d}"


def request_path(kind: str, to: float, service: str) -> str:
    endpoint, range_s, step = MIX[kind]
    frm = to - range_s
    if endpoint == "summary":
        return f"/api/v1/summary?from={frm:.3f}&to={to:.3f}"
    return f"/api/v1/services/{service}/series?from={frm:.3f}&to={to:.3f}&step={step}"


# ---------------------------------------------------------------- the views


def window_rows_sql(lo: int, hi: int, services: int, origin: int | None = None) -> str:
    """SELECT of minute-window rows (HEALTH columns) of ``services`` services over ``[lo, hi)``, 60 messages each.

    The values are deterministic functions of (service, window): a daily CPU
    cycle with per-window noise (three decimals, as senders round it), RAM and
    disk use as any double (a ratio of capacities), disk use slowly growing from ``origin`` (default ``lo``);
    min <= avg <= max.
    """
    n = MSGS_PER_WINDOW
    return f"""
    SELECT service, window_start, {n}::BIGINT AS count,
           {n} * cpu AS cpu_pct_sum, round(cpu - spread, 3) AS cpu_pct_min, round(cpu + spread, 3) AS cpu_pct_max, cpu AS cpu_pct_last,
           {n} * ram AS ram_used_pct_sum, ram - 1 AS ram_used_pct_min, ram + 1 AS ram_used_pct_max, ram AS ram_used_pct_last,
           {n} * disk AS disk_used_pct_sum, disk AS disk_used_pct_min, disk AS disk_used_pct_max, disk AS disk_used_pct_last,
           (window_start + {WINDOW - 0.5})::DOUBLE AS last_ts
    FROM (
        SELECT 'svc-' || lpad(s::VARCHAR, 3, '0') AS service, w AS window_start,
               round(30 + s % 40 + 15 * sin(2 * pi() * w / {DAY} + s) + (hash(s, w) % 1000) / 200.0, 3) AS cpu,
               (hash(w, s) % 1000) / 100.0 AS spread,
               40 + s % 30 + 5 * sin(2 * pi() * w / {HOUR * 6} + s) AS ram,
               20 + s % 50 + (w - {lo if origin is None else origin}) / {DAY * 30}.0 AS disk
        FROM range({services}) t(s), range({lo}, {hi}, {WINDOW}) u(w)
    )"""


def build_views(settings, now: float, days: int, services: int, layout: str = "build") -> dict:
    """The batch view (``days`` days below the horizon) and the real-time view (from the horizon or the last hour on).

    The real-time rows reach one window past the current one, as
    ``RealtimePublisher`` keeps them while the bench runs, so that every
    answer is complete.  ``layout`` "appended": the batch rows as hourly builds appended
    them before the build kept them clustered (each hour in Spark's
    hash-partitioned order), for comparison.  Returns what was built.
    """
    from batch_jobs.build import CLUSTER_BLOCK_S, closed_horizon, cluster_windows, refresh_rollups, window_order
    from healthmon.views import BATCH_VIEW, HEALTH, REALTIME_VIEW, update_view

    horizon = closed_horizon(now, settings.batch_lateness_s)
    lo = horizon - days * DAY
    clustered_until = horizon // CLUSTER_BLOCK_S * CLUSTER_BLOCK_S
    columns = ", ".join(HEALTH.columns)

    def insert_hours(con, start: int, end: int) -> None:
        # Hour after hour, each hour's rows in the build's order: what hourly builds append.
        con.execute(f"INSERT INTO health_window ({columns}) SELECT {columns} FROM ({window_rows_sql(start, end, services)}) "
                    f"ORDER BY window_start // {HOUR}, {window_order(HEALTH)}")

    def batch(con) -> int:
        if layout == "appended":
            con.execute(f"INSERT INTO health_window ({columns}) SELECT {columns} FROM ({window_rows_sql(lo, horizon, services)}) "
                        f"ORDER BY window_start // {HOUR}, hash(service, window_start)")
            refresh_rollups(con, HEALTH, list(range(lo, horizon, HOUR)))
            con.execute("INSERT INTO view_meta VALUES (?, ?, ?, ?, ?, ?)", [horizon, now, WINDOW, "bench", days * 24, 0])
            return con.execute("SELECT count(*) FROM health_window").fetchone()[0]
        # As the batch build leaves the view in steady state: the hours below the last block boundary the
        # horizon crossed are rewritten in the clustered order, the hours since then appended after them.
        insert_hours(con, lo, clustered_until)
        cluster_windows(con, HEALTH)
        insert_hours(con, clustered_until, horizon)
        refresh_rollups(con, HEALTH, list(range(lo, horizon, HOUR)))
        con.execute("INSERT INTO view_meta VALUES (?, ?, ?, ?, ?, ?)", [horizon, now, WINDOW, "bench", days * 24, 0])
        return con.execute("SELECT count(*) FROM health_window").fetchone()[0]

    def realtime(con) -> int:
        rt_lo = min(horizon, int(now - HOUR) // WINDOW * WINDOW)  # the speed layer holds every window from the horizon on
        rt_hi = realtime_reach(now)
        con.execute(f"INSERT INTO health_window ({columns}) SELECT {columns} FROM ({window_rows_sql(rt_lo, rt_hi, services)})")
        con.execute("INSERT INTO speed_progress VALUES ('health', 1, ?, ?, ?, ?)", [now, 1, now, horizon])
        return con.execute("SELECT count(*) FROM health_window").fetchone()[0]

    started = time.perf_counter()
    batch_rows = update_view(settings.views_dir / BATCH_VIEW, batch, fresh=True)
    rt_rows = update_view(settings.views_dir / REALTIME_VIEW, realtime, fresh=True)
    return {
        "layout": layout, "horizon": horizon, "realtime_reach": realtime_reach(now),
        "batch_from": lo, "batch_window_rows": batch_rows, "realtime_window_rows": rt_rows,
        "hours_appended_after_clustering": None if layout == "appended" else (horizon - clustered_until) // HOUR,
        "batch_view_bytes": (settings.views_dir / BATCH_VIEW).stat().st_size, "build_s": round(time.perf_counter() - started, 2),
    }


def realtime_reach(now: float) -> int:
    """The real-time view holds windows up to here: one window past the current one, so answers stay complete between publishes."""
    return (int(now) // WINDOW + 2) * WINDOW


class RealtimePublisher(threading.Thread):
    """Publishes a new real-time view file every ``interval`` seconds (the speed layer's trigger), with the windows time has reached.

    Each publish is a new file, so the API's answers that read the real-time
    view are recomputed as often as under a running speed layer.
    """

    def __init__(self, settings, services: int, data_from: int, reach: int, interval: float) -> None:
        super().__init__(daemon=True)
        self.settings, self.services, self.data_from, self.interval = settings, services, data_from, interval
        self.reach = reach  # windows below are in the view
        self.publishes = 0
        self.publish_s = 0.0
        self.error: str | None = None
        self._stop_event = threading.Event()

    def run(self) -> None:
        from healthmon.views import REALTIME_VIEW, update_view

        while not self._stop_event.wait(self.interval):
            started = time.perf_counter()
            reach = realtime_reach(time.time())
            try:
                update_view(self.settings.views_dir / REALTIME_VIEW, functools.partial(self.change, reach))
            except Exception as exc:  # reported in the results; the bench goes on with the last view
                self.error = repr(exc)
                continue
            self.reach = max(self.reach, reach)
            self.publishes += 1
            self.publish_s += time.perf_counter() - started

    def change(self, reach: int, con) -> None:
        from healthmon.views import HEALTH

        if reach > self.reach:
            columns = ", ".join(HEALTH.columns)
            rows = window_rows_sql(self.reach, reach, self.services, self.data_from)
            con.execute(f"INSERT INTO health_window ({columns}) SELECT {columns} FROM ({rows})")
        con.execute("UPDATE speed_progress SET batch_id = batch_id + 1, committed_at = ?", [time.time()])

    def stop(self) -> dict:
        self._stop_event.set()
        self.join(30)
        return {"interval_s": self.interval, "publishes": self.publishes, "error": self.error,
                "mean_publish_ms": round(1000 * self.publish_s / max(1, self.publishes), 1)}


# ---------------------------------------------------------------- the server


def start_server(data_dir: str, overrides: list[str], tree: Path = REPO, label: str = "serve"):
    """``healthmon serve`` of the source tree ``tree`` (another checkout: the code to compare with) on a free port, up."""
    import subprocess

    import requests

    from tests.procs import HEALTHMON, free_port, healthmon_env, wait_until

    port = free_port()
    env = {"HEALTHMON_DATA_DIR": data_dir, "HEALTHMON_API_PORT": str(port)}
    for item in overrides:
        name, _, value = item.partition("=")
        env[f"HEALTHMON_{name.upper()}"] = value
    log_path = Path(data_dir) / "logs" / f"{label}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:  # `python -m` imports from the working directory first: the tree's own code
        proc = subprocess.Popen([*HEALTHMON, "serve"], cwd=tree, env=healthmon_env(env), stdout=log, stderr=subprocess.STDOUT)

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError("healthmon serve exited: " + log_path.read_text()[-2000:])
        return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).ok

    wait_until(up, 60, "API up", interval=0.05)
    return proc, port


def check_answers(port: int, services: int, data_from: int) -> None:
    """One answer of each kind, checked for its counts: the bench must measure real, complete answers (data from ``data_from``)."""
    import requests

    to = float(int(time.time()))
    for kind in KINDS:
        endpoint, range_s, _step = MIX[kind]
        answer = requests.get(f"http://127.0.0.1:{port}{request_path(kind, to, service_name(7))}", timeout=30)
        if answer.status_code != 200:
            raise RuntimeError(f"{kind}: {answer.status_code} {answer.text[:300]}")
        body = answer.json()
        if endpoint == "summary":
            # every window that starts in [from, to) holds 60 messages of every service
            want = MSGS_PER_WINDOW * (math.ceil(to / WINDOW) - math.ceil(max(to - range_s, data_from) / WINDOW))
            got = sorted({s["count"] for s in body["services"]})
            if len(body["services"]) != services or got != [want]:
                raise RuntimeError(f"{kind}: {len(body['services'])} services, counts {got[:5]}; expected {services} × {want}")
        else:
            want = MSGS_PER_WINDOW * body["step_s"] // WINDOW
            got = sorted({p["count"] for p in body["points"][1:-1] if p["ts"] >= data_from})  # the edge points are partial
            if len(body["points"]) < range_s // body["step_s"] or got != [want]:
                raise RuntimeError(f"{kind}: {len(body['points'])} points, inner counts {got[:5]}; expected {want} each")


def cold_pass(port: int, services: int, bar) -> dict:
    """Every distinct query once (each query type over every service), one after another on one connection, timed.

    Right after a build publishes a batch view no answer is cached: this is
    what the first reader of each query waits.  It also leaves the cache as
    a running dashboard keeps it, for the measured phases.
    """
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    by_kind: dict[str, list[float]] = {kind: [] for kind in KINDS}
    errors = 0
    started = time.perf_counter()
    for kind in KINDS:
        for i in range(1 if MIX[kind][0] == "summary" else services):  # a summary is over all services
            path = request_path(kind, time.time(), service_name(i))
            t0 = time.perf_counter()
            conn.request("GET", path)
            answer = conn.getresponse()
            answer.read()
            by_kind[kind].append(time.perf_counter() - t0)
            errors += answer.status != 200
            bar.update(1)
    conn.close()
    seconds = time.perf_counter() - started
    return {
        "clients": 1, "seconds": round(seconds, 2), "errors": errors,
        "overall": figures([e for v in by_kind.values() for e in v], seconds),
        "by_query": {kind: figures(v, seconds) for kind, v in by_kind.items()},
    }


def warm_every_process(port: int, services: int, connections: int) -> float:
    """Every distinct query once on each of ``connections`` new connections at once; the seconds it took.

    With ``api_processes`` > 1 each server process has its own cache and accepts connections as they come: the
    cold pass warmed the one that took its connection.  Many connections land on every process (all on one:
    2^-(connections-1) for two), so the measured phases see the steady state of a long-running API as the
    one-process server does after its cold pass.
    """
    paths = [request_path(kind, time.time(), service_name(i)) for kind in KINDS
             for i in range(1 if MIX[kind][0] == "summary" else services)]
    conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=60) for _ in range(connections)]
    for conn in conns:
        conn.connect()  # all open before any request: the processes share them out
    failures: list[str] = []

    def ask(conn: http.client.HTTPConnection, seed: int) -> None:
        for path in random.Random(seed).sample(paths, len(paths)):
            conn.request("GET", path)
            answer = conn.getresponse()
            answer.read()
            if answer.status != 200:
                failures.append(f"{path}: {answer.status}")
        conn.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=ask, args=(conn, i)) for i, conn in enumerate(conns)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise RuntimeError(f"warming: {len(failures)} answers not 200, first {failures[0]}")
    return round(time.perf_counter() - started, 1)


def server_times(port: int) -> dict[str, tuple[float, float]]:
    """(sum seconds, count) of the server's request histogram per endpoint (status 200)."""
    import requests

    out: dict[str, list[float]] = {}
    for line in requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text.splitlines():
        for suffix, index in (("_sum{", 0), ("_count{", 1)):
            if line.startswith("healthmon_api_request_duration_seconds" + suffix) and 'status="200"' in line:
                endpoint = line.split('endpoint="', 1)[1].split('"', 1)[0]
                out.setdefault(endpoint, [0.0, 0.0])[index] = float(line.rsplit(" ", 1)[1])
    return {k: (v[0], v[1]) for k, v in out.items()}


SWITCH = "healthmon_api_view_switch_seconds"


def switch_times(port: int) -> dict[str, float]:
    """The server's histogram of view switches (``healthmon_api_view_switch_seconds``: new files noticed until requests read
    them, attach and preparation included): ``sum``, ``count`` and the cumulative count of each bucket ``le``; {} from code
    without it."""
    import requests

    out: dict[str, float] = {}
    for line in requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text.splitlines():
        if line.startswith(SWITCH + "_sum "):
            out["sum"] = float(line.rsplit(" ", 1)[1])
        elif line.startswith(SWITCH + "_count "):
            out["count"] = float(line.rsplit(" ", 1)[1])
        elif line.startswith(SWITCH + '_bucket{le="'):
            out[line.split('le="', 1)[1].split('"', 1)[0]] = float(line.rsplit(" ", 1)[1])
    return out


def switch_figures(before: dict[str, float], after: dict[str, float]) -> dict | None:
    """Switches between two ``switch_times``: how many, the mean ms, and the bucket bound (ms) below which 95 % of them fell."""
    count = after.get("count", 0) - before.get("count", 0)
    if count <= 0:
        return None
    bounds = sorted((float(le), after[le] - before.get(le, 0)) for le in after if le not in ("sum", "count"))
    p95 = next((bound for bound, below in bounds if below >= 0.95 * count), math.inf)
    return {"switches": int(count), "mean_ms": round(1000 * (after["sum"] - before.get("sum", 0)) / count, 1),
            "p95_ms_at_most": None if math.isinf(p95) else round(1000 * p95, 1)}


def server_means(before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]) -> dict[str, float]:
    """The server's mean ms per request by endpoint between two ``server_times``."""
    means = {}
    for endpoint, (total, count) in after.items():
        before_total, before_count = before.get(endpoint, (0.0, 0.0))
        if count > before_count and endpoint != "/metrics":
            means[endpoint] = round(1000 * (total - before_total) / (count - before_count), 2)
    return means


# ---------------------------------------------------------------- clients (child processes)


def client(port: int, seed: int, services: int, rate: float, start_at: float, record_from: float, end_at: float, done, out) -> None:
    """Requests on one keep-alive connection until ``end_at``; puts its (kind, seconds, status) records and errors on ``out``.

    ``rate`` 0: closed loop, latency from send to the answer read.  Otherwise
    requests are due at Poisson times of ``rate`` per second and the latency
    counts from the time a request was due.
    """
    rng = random.Random(seed)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    records: list[tuple[int, float, int]] = []
    errors: list[str] = []
    clock = time.perf_counter
    time.sleep(max(0.0, start_at - time.time()))
    due = clock()
    while True:
        if rate:
            due += rng.expovariate(rate)
            time.sleep(max(0.0, due - clock()))
        now = time.time()
        if now >= end_at:
            break
        k = rng.randrange(len(KINDS))
        path = request_path(KINDS[k], now, service_name(rng.randrange(services)))
        started = due if rate else clock()
        try:
            conn.request("GET", path)
            answer = conn.getresponse()
            body = answer.read()
            status = answer.status
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            status, body = 0, repr(exc).encode()
        elapsed = clock() - started
        if now >= record_from:
            records.append((k, elapsed, status))
            with done.get_lock():
                done.value += 1
        if status != 200 and len(errors) < 5:
            errors.append(f"{KINDS[k]} {status}: {body[:200]!r}")
    conn.close()
    out.put((records, errors))


def run_phase(port: int, server_pid: int, clients: int, rate: float, args, seconds: float, bar, label: str, own_times: bool = True) -> dict:
    """``clients`` client processes (``rate`` req/s in all; 0: closed loop) for ``args.warmup + seconds``; the recorded figures."""
    ctx = multiprocessing.get_context("spawn")
    done = ctx.Value("q", 0)
    out = ctx.Queue()
    start_at = time.time() + 1.0 + 0.1 * clients  # every client process is up before the first request
    record_from = start_at + args.warmup
    end_at = record_from + seconds
    procs = [
        ctx.Process(target=client, args=(port, 1000 * len(label) + i, args.services, rate / clients, start_at, record_from, end_at,
                                         done, out), daemon=True)
        for i in range(clients)
    ]
    for p in procs:
        p.start()
    server_before = server_times(port)
    time.sleep(max(0.0, record_from - time.time()))
    switches_before = switch_times(port) if own_times else {}
    cpu_before = tree_cpu_s(server_pid)
    watch = CpuWatch()
    shown = 0.0
    while time.time() < end_at:
        time.sleep(0.5)
        step = min(seconds, time.time() - record_from) - shown
        if step > 0:
            bar.update(step)
            shown += step
        bar.set_postfix_str(f"{label}: {done.value} requests", refresh=False)
    bar.update(max(0.0, seconds - shown))
    cpu_server = tree_cpu_s(server_pid) - cpu_before
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(10)
    cpu = watch.stop()  # once the clients are waited for: their CPU time counts as ours
    records = [r for recs, _ in results for r in recs]
    errors = [e for _, errs in results for e in errs]
    by_kind = {kind: figures([e for k, e, s in records if KINDS[k] == kind and s == 200], seconds) for kind in KINDS}
    server_mean = server_means(server_before, server_times(port)) if own_times else None
    switches = switch_figures(switches_before, switch_times(port)) if own_times else None
    return {
        "clients": clients, "offered_req_per_s": rate or None, "seconds": seconds,
        "overall": figures([e for _, e, s in records if s == 200], seconds), "by_query": by_kind,
        "errors": sum(1 for _, _, s in records if s != 200), "error_samples": errors[:5],
        "server_cpu_cores": round(cpu_server / seconds, 2), "server_mean_ms_by_endpoint": server_mean,
        # CPU time the server spent per answer: much less disturbed by other processes than the latencies
        "server_cpu_ms_per_request": round(1000 * cpu_server / max(1, len(records)), 2),
        "view_switches": switches,
        "cpu": cpu,
        "records": records, "server_cpu_s": cpu_server,  # for merge_rounds (left out of the results)
    }


WRK = "/usr/bin/wrk"
WRK_SCRIPT = """-- generated by bench/query.py: the bench's mix of queries, each kind equally often, ``to`` = this client's clock
local kinds = {%(kinds)s}
local services = %(services)d
local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("seed", #threads)
end

function init(args)
  math.randomseed(seed * 7919 + os.time())
  non2xx = 0
  first_bad = ""
end

function request()
  local to = os.time()
  local kind = kinds[math.random(#kinds)]
  local path
  if kind[1] == "summary" then
    path = string.format("/api/v1/summary?from=%%d&to=%%d", to - kind[2], to)
  else
    local service = math.random(0, services - 1)
    path = string.format("/api/v1/services/svc-%%03d/series?from=%%d&to=%%d&step=%%s", service, to - kind[2], to, kind[3])
  end
  return wrk.format("GET", path)
end

function response(status, headers, body)
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
    if first_bad == "" then first_bad = status .. " " .. string.sub(body, 1, 200) end
  end
end

function done(summary, latency, requests)
  local bad, sample = 0, ""
  for _, thread in ipairs(threads) do
    bad = bad + thread:get("non2xx")
    if sample == "" then sample = thread:get("first_bad") end
  end
  local e = summary.errors
  io.write(string.format('WRK_RESULT {"requests": %%d, "duration_us": %%d, "non2xx": %%d, "socket_errors": %%d, "timeouts": %%d, ' ..
    '"p50_us": %%d, "p95_us": %%d, "p99_us": %%d, "mean_us": %%.1f, "max_us": %%d}\\n', summary.requests, summary.duration, bad,
    e.connect + e.read + e.write, e.timeout, latency:percentile(50), latency:percentile(95), latency:percentile(99),
    latency.mean, latency.max))
  io.write("WRK_FIRST_BAD " .. string.gsub(sample, "%%s+", " ") .. "\\n")
end
"""


def wrk_script(services: int) -> str:
    """The Lua script that makes wrk draw the bench's requests (``MIX``) and report its figures as one JSON line."""
    kinds = ", ".join(f'{{"{endpoint}", {range_s}, "{step or ""}"}}' for endpoint, range_s, step in MIX.values())
    return WRK_SCRIPT % {"kinds": kinds, "services": services}


def run_wrk(port: int, server_pid: int, args, seconds: float, bar, script: Path, own_times: bool = True) -> dict:
    """wrk, ``args.clients`` connections in a closed loop (``args.wrk_threads`` threads): ``args.warmup`` s unmeasured, then ``seconds``.

    A load generator in C: the 16 Python client processes take ~1 core of the two, wrk a small part of one
    (``generator_cpu_cores``).  Every answer must be a 2xx: the script counts the others (and wrk's socket errors)
    and the bench fails loudly on any.
    """
    import json
    import resource
    import subprocess

    def wrk(duration: int) -> tuple[dict, str]:
        argv = [WRK, "-c", str(args.clients), "-t", str(args.wrk_threads), "-d", f"{duration}s", "--timeout", "30s",
                "-s", str(script), f"http://127.0.0.1:{port}"]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
        lines = done.stdout.splitlines()
        found = [line.split(" ", 1)[1] for line in lines if line.startswith("WRK_RESULT ")]
        if done.returncode != 0 or not found:
            raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout[-1000:]} {done.stderr[-1000:]}")
        bad = next((line.split(" ", 1)[1] if " " in line else "" for line in lines if line.startswith("WRK_FIRST_BAD")), "")
        return json.loads(found[0]), bad

    if args.warmup > 0:
        wrk(max(1, round(args.warmup)))
    duration = max(1, round(seconds))
    server_before = server_times(port)
    switches_before = switch_times(port) if own_times else {}
    cpu_before = tree_cpu_s(server_pid)
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    watch = CpuWatch()
    bar.set_postfix_str(f"wrk: {duration} s", refresh=True)
    raw, first_bad = wrk(duration)
    cpu = watch.stop()
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_server = tree_cpu_s(server_pid) - cpu_before
    bar.update(duration)
    wall = raw["duration_us"] / 1e6
    generator_s = (children_after.ru_utime - children_before.ru_utime) + (children_after.ru_stime - children_before.ru_stime)
    errors = raw["non2xx"] + raw["socket_errors"] + raw["timeouts"]
    if errors:
        raise RuntimeError(f"wrk: {raw['non2xx']} answers not 2xx, {raw['socket_errors']} socket errors, {raw['timeouts']} timeouts; "
                           f"first: {first_bad[:300]}")
    p99 = raw["p99_us"] / 1000
    return {
        "clients": args.clients, "generator": f"wrk -c {args.clients} -t {args.wrk_threads} (closed loop)", "seconds": round(wall, 1),
        "overall": {"requests": raw["requests"], "req_per_s": round(raw["requests"] / wall, 1),
                    "p50_ms": round(raw["p50_us"] / 1000, 2), "p95_ms": round(raw["p95_us"] / 1000, 2), "p99_ms": round(p99, 2),
                    "mean_ms": round(raw["mean_us"] / 1000, 2), "max_ms": round(raw["max_us"] / 1000, 2),
                    "p99_over_target": round(p99 / TARGET_P99_MS, 2)},
        "errors": errors, "server_cpu_cores": round(cpu_server / wall, 2),
        "server_cpu_ms_per_request": round(1000 * cpu_server / max(1, raw["requests"]), 2),
        "generator_cpu_cores": round(generator_s / wall, 2),
        "server_mean_ms_by_endpoint": server_means(server_before, server_times(port)) if own_times else None,
        "view_switches": switch_figures(switches_before, switch_times(port)) if own_times else None,
        "cpu": cpu,
    }


def merge_rounds(rounds: list[dict]) -> dict:
    """One phase measured in several rounds (``--rounds``) as one: the latencies of every round together; wrk's (one
    histogram per run) as the median round's figure; CPU and switches summed over the rounds."""
    import statistics

    first = rounds[0]
    seconds = sum(r["seconds"] for r in rounds)
    merged = {**first, "rounds": len(rounds), "seconds": round(seconds, 1), "errors": sum(r["errors"] for r in rounds)}
    if "records" in first:
        records = [rec for r in rounds for rec in r["records"]]
        cpu_server = sum(r["server_cpu_s"] for r in rounds)
        merged.update({
            "overall": figures([e for _, e, st in records if st == 200], seconds),
            "by_query": {kind: figures([e for k, e, st in records if KINDS[k] == kind and st == 200], seconds) for kind in KINDS},
            "error_samples": [e for r in rounds for e in r["error_samples"]][:5],
            "server_cpu_cores": round(cpu_server / seconds, 2),
            "server_cpu_ms_per_request": round(1000 * cpu_server / max(1, len(records)), 2),
        })
    else:  # wrk
        overall = {key: round(statistics.median(r["overall"][key] for r in rounds), 2) for key in first["overall"]}
        overall["requests"] = sum(r["overall"]["requests"] for r in rounds)
        overall["req_per_s"] = round(overall["requests"] / seconds, 1)
        merged.update({"overall": overall,
                       "server_cpu_cores": round(statistics.mean(r["server_cpu_cores"] for r in rounds), 2),
                       "server_cpu_ms_per_request": round(statistics.mean(r["server_cpu_ms_per_request"] for r in rounds), 2)})
    switches = [r["view_switches"] for r in rounds if r.get("view_switches")]
    if switches:
        count = sum(sw["switches"] for sw in switches)
        bounds = [sw["p95_ms_at_most"] for sw in switches]
        merged["view_switches"] = {"switches": count, "mean_ms": round(sum(sw["switches"] * sw["mean_ms"] for sw in switches) / count, 1),
                                   "p95_ms_at_most": None if None in bounds else max(bounds)}
    merged["cpu"] = {key: round(statistics.mean(r["cpu"][key] for r in rounds), 2) for key in first["cpu"]}
    merged.pop("records", None)
    merged.pop("server_cpu_s", None)
    return merged


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def figures(latencies: list[float], seconds: float) -> dict:
    ordered = sorted(latencies)
    if not ordered:
        return {"requests": 0}
    ms = {f"p{int(q * 100)}_ms": round(1000 * percentile(ordered, q), 2) for q in (0.5, 0.95, 0.99)}
    return {
        "requests": len(ordered), "req_per_s": round(len(ordered) / seconds, 1), **ms,
        "mean_ms": round(1000 * sum(ordered) / len(ordered), 2), "max_ms": round(1000 * ordered[-1], 2),
        "p99_over_target": round(ms["p99_ms"] / TARGET_P99_MS, 2),
    }


# ---------------------------------------------------------------- report

PHASE_COLORS = {"cold": "#bdbdbd", "baseline": "#6baed6", "paced": "#fd8d3c", "saturated": "#a63603", "wrk": "#54278f"}


def phase_label(name: str, phase: dict) -> str:
    if name == "cold":
        return "cold cache, 1 client"
    if name == "baseline":
        return "1 client"
    if name == "paced":
        return f"{phase['clients']} clients, {phase['offered_req_per_s']:g} req/s"
    if name == "wrk":
        return f"wrk, {phase['clients']} connections, closed loop"
    return f"{phase['clients']} clients, closed loop"


def chart(result: dict, path: Path) -> None:
    """p50 and p99 of each query in each phase against the target (log scale), and the requests/s of each phase."""
    phases = [(name, result[name]) for name in PHASE_COLORS if name in result]
    labels = [*KINDS, "overall"]
    load = result["machine"]["loadavg_at_start"][0]
    title = f"healthmon query bench, {result['at']}, {result['machine']['cpus']} CPUs, load average {load:.1f} at start"
    with figure(path, title, 1, 2, figsize=(15, 5.5), gridspec_kw={"width_ratios": [3.2, 1]}) as (_plt, _fig, (ax, ax_rate)):
        width = 0.8 / len(phases)
        for i, (name, phase) in enumerate(phases):
            rows = [phase["overall"] if label == "overall" else phase.get("by_query", {}).get(label, {}) for label in labels]
            xs = [x + (i - (len(phases) - 1) / 2) * width for x in range(len(labels))]
            ax.bar(xs, [r.get("p99_ms", 0) for r in rows], width, color=PHASE_COLORS[name], label=f"{phase_label(name, phase)}: p99")
            ax.scatter(xs, [r.get("p50_ms", 0) for r in rows], marker="_", s=120, color="black", zorder=3,
                       label="p50" if i == 0 else None)
        ax.axhline(TARGET_P99_MS, color="crimson", linestyle="--", label=f"target: p99 ≤ {TARGET_P99_MS:g} ms")
        ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right")
        ax.set_yscale("log")
        ax.set_ylabel("latency, ms (log scale)")
        ax.set_title(f"Latency per query: {result['params']['days']} d × {result['params']['services']} services")
        ax.legend(fontsize=8, loc="upper left")
        rates = [phase["overall"].get("req_per_s", 0) for _, phase in phases]
        ax_rate.bar(range(len(phases)), rates, color=[PHASE_COLORS[name] for name, _ in phases])
        for i, rate in enumerate(rates):
            ax_rate.text(i, rate, f"{rate:.0f}", ha="center", va="bottom")
        ax_rate.set_xticks(range(len(phases)), [phase_label(name, phase).replace(", ", "\n") for name, phase in phases], fontsize=8)
        ax_rate.set_ylabel("requests/s answered (all queries)")
        ax_rate.set_title("Throughput")


def print_table(name: str, phase: dict) -> None:
    if name == "cold":
        print(f"\ncold ({phase_label(name, phase)}): every distinct query once, {phase['seconds']:g} s, errors {phase['errors']}")
    else:
        print(f"\n{name} ({phase_label(name, phase)}): {phase['seconds']:g} s, errors {phase['errors']}, "
              f"server CPU {phase['server_cpu_cores']} cores, {phase['server_cpu_ms_per_request']} ms a request; "
              f"other processes {phase['cpu']['others_cores']} cores"
              + (f", the load generator {phase['generator_cpu_cores']} cores" if "generator_cpu_cores" in phase else ""))
    header = f"{'query':<15} {'requests':>8} {'req/s':>7} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'p99/target':>10}"
    print(header)
    print("-" * len(header))
    for label, row in [*phase.get("by_query", {}).items(), ("overall", phase["overall"])]:
        if not row.get("requests"):
            print(f"{label:<15} {0:>8}")
            continue
        print(f"{label:<15} {row['requests']:>8} {row['req_per_s']:>7} {row['p50_ms']:>8} {row['p95_ms']:>8} {row['p99_ms']:>8} "
              f"{row['p99_over_target']:>10}")
    if phase.get("server_mean_ms_by_endpoint"):
        print("server's own mean time (ms): " + ", ".join(f"{k} {v}" for k, v in phase["server_mean_ms_by_endpoint"].items()))
    if phase.get("view_switches"):
        switches = phase["view_switches"]
        print(f"view switches (new files noticed until requests read them, answers prepared): {switches['switches']}, "
              f"mean {switches['mean_ms']} ms, 95 % within {switches['p95_ms_at_most']} ms")


def print_versus(phases: dict, versus: dict) -> None:
    """Each phase's figures of this tree's server beside the compared one's, with their ratios (this / compared)."""
    print(f"\nthis tree {'(' + ' '.join(versus['this_settings']) + ')' if versus['this_settings'] else ''} against "
          f"{versus['tree']} {' '.join(versus['settings'])}, measured by turns in this run: this / compared")
    header = f"{'phase':<10} {'req/s':>17} {'p50 ms':>19} {'p99 ms':>19} {'CPU ms/request':>19}"
    print(header)
    print("-" * len(header))
    for name, ours in phases.items():
        theirs = versus["phases"].get(name)
        if theirs is None or name == "cold":
            continue
        cells = []
        for key in ("req_per_s", "p50_ms", "p99_ms"):
            a, b = ours["overall"].get(key, 0), theirs["overall"].get(key, 0)
            cells.append(f"{a:>6g}/{b:<6g} {a / b if b else 0:>4.2f}")
        a, b = ours["server_cpu_ms_per_request"], theirs["server_cpu_ms_per_request"]
        cells.append(f"{a:>6g}/{b:<6g} {a / b if b else 0:>4.2f}")
        print(f"{name:<10} " + " ".join(f"{c:>19}" for c in cells))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--services", type=int, default=100)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--paced-rate", type=float, default=16.0, help="requests/s of all clients together in the paced phase")
    parser.add_argument("--baseline-seconds", type=float, default=15.0, help="measured time of the one-client phase (0: skip)")
    parser.add_argument("--paced-seconds", type=float, default=0.0, help="measured time of the paced phase (0: skip)")
    parser.add_argument("--saturated-seconds", type=float, default=30.0, help="measured time of the closed-loop phase (0: skip)")
    parser.add_argument("--wrk-seconds", type=float, default=30.0, help="measured time of the wrk phase (0: skip)")
    parser.add_argument("--wrk-threads", type=int, default=1, help="threads of wrk (each an event loop over its connections)")
    parser.add_argument("--warmup", type=float, default=5.0, help="unmeasured time before each phase")
    parser.add_argument("--rounds", type=int, default=1,
                        help="split each phase's time into this many rounds, the servers by turns in each (a shared machine's "
                             "bursts then fall on both)")
    parser.add_argument("--layout", choices=["build", "appended"], default="build",
                        help="batch rows as the build stores them, or appended hour by hour without clustering (before the fix)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting of the server (e.g. api_threads=16)")
    parser.add_argument("--versus-tree", type=Path, default=None, metavar="DIR",
                        help="also serve the views with the code of this source tree (e.g. `git archive HEAD | tar -x -C DIR`) "
                             "and measure each phase on both servers by turns")
    parser.add_argument("--versus-set", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting of the compared server (with no --versus-tree: the same code, other settings)")
    parser.add_argument("--out", default=str(RESULTS_DIR / "query.json"), help="results JSON (the chart goes beside it, .png)")
    args = parser.parse_args()
    if args.wrk_seconds > 0 and not os.access(WRK, os.X_OK):
        parser.error(f"{WRK} is missing (scripts/setup.sh installs it; or --wrk-seconds 0)")

    from tqdm import tqdm

    from healthmon.config import load_settings
    from tests.procs import stop_process

    plan = [(name, clients, rate, seconds) for name, clients, rate, seconds in (
        ("baseline", 1, 0.0, args.baseline_seconds),
        ("paced", args.clients, args.paced_rate, args.paced_seconds),
        ("saturated", args.clients, 0.0, args.saturated_seconds),
    ) if seconds > 0]
    info = machine()
    data_dir = tempfile.mkdtemp(prefix="healthmon-bench-query-")
    settings = load_settings({"data_dir": data_dir}, environ={})
    now = time.time()
    print(f"building views: {args.days} d × {args.services} services (batch), the last hour (real-time) ...", flush=True)
    built = build_views(settings, now, args.days, args.services, args.layout)
    print(f"  {built['batch_window_rows']:,} batch window rows ({built['batch_view_bytes'] / 1e6:.0f} MB), "
          f"{built['realtime_window_rows']:,} real-time rows, {built['build_s']} s", flush=True)
    servers = {"this": start_server(data_dir, args.overrides)}
    settings_of = {"this": args.overrides}
    if args.versus_tree or args.versus_set:
        servers["versus"] = start_server(data_dir, args.versus_set, (args.versus_tree or REPO).resolve(), "versus")
        settings_of["versus"] = args.versus_set
    # /metrics is the answering process's own: with several server processes its request histogram is a part
    one_process = {label: not any(item.replace(" ", "").startswith("api_processes=") and item.split("=", 1)[1].strip() != "1"
                                  for item in overrides) for label, overrides in settings_of.items()}
    script = Path(data_dir) / "mix.lua"
    script.write_text(wrk_script(args.services))
    publisher = RealtimePublisher(settings, args.services, built["batch_from"], built["realtime_reach"], settings.speed_trigger_s)
    publisher.start()
    by_server: dict[str, dict] = {label: {} for label in servers}
    codes = {}
    try:
        for label, (_proc, port) in servers.items():
            with tqdm(total=3 + 4 * args.services, unit="query", desc=f"cold pass ({label})") as bar:
                by_server[label]["cold"] = cold_pass(port, args.services, bar)
            check_answers(port, args.services, built["batch_from"])
            if not one_process[label]:
                print(f"warming every server process ({label}): {warm_every_process(port, args.services, 8)} s", flush=True)
        measured = sum(seconds for *_, seconds in plan) + max(0.0, args.wrk_seconds)
        rounds: dict[str, dict[str, list[dict]]] = {label: {} for label in servers}
        with tqdm(total=measured * len(servers), unit="s", desc="query bench",
                  bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s {postfix}") as bar:
            for r in range(args.rounds):
                # by turns, so that both see the same machine; each round the other one first
                turns = list(servers.items())[:: 1 if r % 2 == 0 else -1]
                for name, clients, rate, seconds in plan:
                    for label, (proc, port) in turns:
                        rounds[label].setdefault(name, []).append(
                            run_phase(port, proc.pid, clients, rate, args, seconds / args.rounds, bar, name, one_process[label]))
                if args.wrk_seconds > 0:
                    for label, (proc, port) in turns:
                        rounds[label].setdefault("wrk", []).append(
                            run_wrk(port, proc.pid, args, args.wrk_seconds / args.rounds, bar, script, one_process[label]))
        for label, phases_of in rounds.items():
            by_server[label].update({name: merge_rounds(runs) for name, runs in phases_of.items()})
    finally:
        realtime_publishes = publisher.stop()
        for label, (proc, _port) in servers.items():
            codes[label] = stop_process(proc)
        shutil.rmtree(data_dir, ignore_errors=True)
    phases = by_server["this"]
    code = codes["this"]
    versus = None
    if "versus" in servers:
        versus = {"tree": str(args.versus_tree or REPO), "settings": args.versus_set, "this_settings": args.overrides,
                  "server_exit_code": codes["versus"], "phases": by_server["versus"]}
    result = {
        "bench": "query", "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": info,
        "loadavg_at_end": os.getloadavg(),
        "params": {"days": args.days, "services": args.services, "clients": args.clients, "paced_rate": args.paced_rate,
                   "layout": args.layout, "settings": args.overrides,
                   "mix": {k: {"endpoint": e, "range_s": r, "step": s} for k, (e, r, s) in MIX.items()}},
        "views": built, "realtime_publishes": realtime_publishes, "target_p99_ms": TARGET_P99_MS, "server_exit_code": code, **phases,
        "versus": versus,
    }
    for name, phase in phases.items():
        print_table(name, phase)
    if versus is not None:
        print_versus(phases, versus)
    out = Path(args.out)
    write_results(result, out, chart)
    print(f"\nreal-time view published {realtime_publishes['publishes']} times (every {realtime_publishes['interval_s']:g} s, "
          f"{realtime_publishes['mean_publish_ms']} ms each)")
    print(f"load average: {info['loadavg_at_start'][0]:.2f} at start, {result['loadavg_at_end'][0]:.2f} at end")
    print(f"results: {out}, chart: {out.with_suffix('.png')}")
    return 0 if all(p["errors"] == 0 for server in by_server.values() for p in server.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
