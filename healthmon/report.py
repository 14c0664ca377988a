"""``healthmon report``: PNG charts of one UTC day, per service and per drive, from the merged views.

The report reads the view files directly (``ViewReader``: batch view below the
horizon, real-time view at or above it, the merge rule of ``serving.queries``),
so it needs no running API and gives the numbers the API would give.

What it writes into ``--out`` (default ``reports/<YYYY-MM-DD>/`` under the
current directory):

- ``service-<name>.png`` per service with messages that day: three stacked
  panels (CPU %, RAM used %, disk used %), each the 5-minute average as a line
  (hourly, or daily, for a day older than retention keeps minute windows)
  with the bucket's min–max as a band; the x axis is the whole day in UTC;
- ``drive-<host>-<device>.png`` per drive with I/Os that day: two panels (read,
  write), p50/p95/p99 latency per 5 minutes from the merged sketch buckets (and
  the mean, dotted, which mean-only sources such as ``/proc/diskstats`` also
  give), log scale in µs;
- ``summary.json``: the index: the day, the horizon at the time of the report,
  and per chart its file and day totals (messages and metric avg/max per
  service; I/Os per op per drive).

Decisions: ``--service S`` limits the report to that service's chart (drives
belong to hosts, not services, so none are drawn); an unknown service is an
error (exit 2).  A day without any data writes nothing and exits 1 with a
message, so a script notices; a service known but silent that day is the same.
Charts are drawn with matplotlib's Agg canvas (no display needed, no pyplot
global state).  ``build_report`` returns what it drew, arrays included.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path

import matplotlib.dates as mdates
import matplotlib.ticker as mticker
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from tqdm import tqdm

from healthmon import sketch
from healthmon.config import Settings
from healthmon.schema import HEALTH_METRICS, NAME_RE
from healthmon.views import ViewReader
from serving import queries
from serving.params import iso

DAY_S = 86400
STEP_S = 300
"""Bucket of every chart: 5 minutes, 288 points a day."""
DATE_FORMAT = "%d-%m-%Y"
"""The form of ``--date`` (DD-MM-YYYY)."""
OPS = ("read", "write")
PERCENTILES = (("p50", 0.50), ("p95", 0.95), ("p99", 0.99))
METRIC_LABELS = {"cpu_pct": "CPU (%)", "ram_used_pct": "RAM used (%)", "disk_used_pct": "disk used (%)"}
INDEX_FILE = "summary.json"


class ReportError(Exception):
    """A report that cannot be made; ``exit_code`` is what the command returns (1: no data, 2: bad input)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def parse_day(text: str) -> date:
    """The day of ``DD-MM-YYYY`` text; ValueError naming the expected form otherwise."""
    try:
        return datetime.strptime(text.strip(), DATE_FORMAT).date()
    except ValueError:
        raise ValueError(f"{text!r} is not a date in DD-MM-YYYY form (e.g. 31-01-2024)") from None


def day_bounds(day: date) -> tuple[int, int]:
    """``[start, end)`` of a UTC day in epoch seconds."""
    start = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp())
    return start, start + DAY_S


def file_part(name: str) -> str:
    """A name made safe for a file name (service/host/device names may hold ':')."""
    return name.replace(":", "_")


@dataclass
class ServiceChart:
    """One service's day: bucket starts (epoch s), message counts, and per metric ``avg``/``min``/``max`` (NaN when empty)."""

    service: str
    path: Path
    ts: np.ndarray
    count: np.ndarray
    metrics: dict[str, dict[str, np.ndarray]]
    totals: dict


@dataclass
class DriveChart:
    """One drive's day: bucket starts, and per op the I/O counts and ``p50``/``p95``/``p99``/``mean`` in µs (NaN when empty)."""

    host: str
    device: str
    path: Path
    ts: np.ndarray
    count: dict[str, np.ndarray]
    latency: dict[str, dict[str, np.ndarray]]


@dataclass
class Report:
    day: date
    out_dir: Path
    index: Path
    step_s: int
    services: list[ServiceChart] = field(default_factory=list)
    drives: list[DriveChart] = field(default_factory=list)


def _nan(value) -> float:
    return np.nan if value is None else float(value)


def service_series(con, service: str, lo: int, hi: int, horizon: int,
                   step: int = STEP_S) -> tuple[np.ndarray, np.ndarray, dict[str, dict[str, np.ndarray]]]:
    """Bucket starts, counts and per metric avg/min/max arrays of one service over ``[lo, hi)`` (merged views)."""
    ts = np.arange(lo, hi, step, dtype=np.int64)
    count = np.zeros(len(ts), dtype=np.int64)
    metrics = {m: {agg: np.full(len(ts), np.nan) for agg in ("avg", "min", "max")} for m in HEALTH_METRICS}
    for row in queries.series(con, service, lo, hi, step, horizon):
        i = (row["bucket"] - lo) // step
        count[i] = row["count"]
        for m in HEALTH_METRICS:
            total = row[f"{m}_sum"]
            metrics[m]["avg"][i] = total / row["count"] if row["count"] and total is not None else np.nan
            metrics[m]["min"][i] = _nan(row[f"{m}_min"])
            metrics[m]["max"][i] = _nan(row[f"{m}_max"])
    return ts, count, metrics


def drive_series(con, host: str, device: str, op: str, lo: int, hi: int, horizon: int,
                 step: int = STEP_S) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """I/O counts and p50/p95/p99/mean (µs) arrays of one drive and op over ``[lo, hi)`` (merged views and sketches)."""
    n = (hi - lo) // step
    count = np.zeros(n, dtype=np.int64)
    latency = {name: np.full(n, np.nan) for name in (*(p for p, _ in PERCENTILES), "mean")}
    totals, sketches = queries.disk_latency(con, host, device, op, lo, hi, step, horizon)
    for row in totals:
        i = (row["bucket"] - lo) // step
        count[i] = row["count"]
        if row["count"] and row["sum_us"] is not None:
            latency["mean"][i] = row["sum_us"] / row["count"]
    for bucket, pairs in sketches.items():
        i = (bucket - lo) // step
        for name, q in PERCENTILES:
            latency[name][i] = _nan(sketch.quantile(pairs, q))
    return count, latency


# ---------------------------------------------------------------- drawing


def _time_axis(ax, lo: int, hi: int) -> None:
    ax.set_xlim(np.datetime64(lo, "s"), np.datetime64(hi, "s"))
    # Matplotlib dates are days since 1970-01-01 UTC, so multiples of 1/24 are the UTC hours
    # (and much faster than the rrule-based HourLocator).
    ax.xaxis.set_major_locator(mticker.MultipleLocator(3 / 24))
    ax.xaxis.set_minor_locator(mticker.MultipleLocator(1 / 24))
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M", tz=UTC))
    ax.grid(True, which="major", alpha=0.3)


def _save(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)
    fig.savefig(path, format="png")


def draw_service(chart: ServiceChart, day: date, lo: int, hi: int) -> None:
    fig = Figure(figsize=(11, 8.5), dpi=100, layout="constrained")
    axes = fig.subplots(len(HEALTH_METRICS), 1, sharex=True)
    x = chart.ts.astype("datetime64[s]")
    for ax, m in zip(axes, HEALTH_METRICS, strict=True):
        values = chart.metrics[m]
        ax.fill_between(x, values["min"], values["max"], alpha=0.25, color="tab:blue", linewidth=0, label="min–max")
        ax.plot(x, values["avg"], color="tab:blue", linewidth=1.2, marker=".", markersize=2, label="average")
        ax.set_ylabel(METRIC_LABELS[m])
        ax.set_ylim(0, 100)
        _time_axis(ax, lo, hi)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=2, fontsize="small")
    axes[-1].set_xlabel(f"time (UTC), {day.isoformat()}")
    totals = chart.totals
    step = f"{(chart.ts[1] - chart.ts[0]) // 60}-minute" if len(chart.ts) > 1 else "daily"
    fig.suptitle(f"{chart.service} — {day.isoformat()} (UTC): {step} average, min–max band; {totals['messages']} messages")
    _save(fig, chart.path)


def draw_drive(chart: DriveChart, day: date, lo: int, hi: int) -> None:
    fig = Figure(figsize=(11, 7), dpi=100, layout="constrained")
    axes = fig.subplots(len(OPS), 1, sharex=True)
    x = chart.ts.astype("datetime64[s]")
    styles = {"p50": ("tab:green", "-"), "p95": ("tab:orange", "-"), "p99": ("tab:red", "-"), "mean": ("grey", ":")}
    legend = None
    for ax, op in zip(axes, OPS, strict=True):
        latency = chart.latency[op]
        ios = int(chart.count[op].sum())
        if ios:
            for name, (color, style) in styles.items():
                ax.plot(x, latency[name], color=color, linestyle=style, linewidth=1.1, marker=".", markersize=2, label=name)
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(mticker.LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(mticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
            ax.yaxis.set_minor_formatter(mticker.NullFormatter())
            legend = legend or ax.get_legend_handles_labels()
        else:
            ax.text(0.5, 0.5, f"no {op}s this day", transform=ax.transAxes, ha="center", va="center", color="grey")
            ax.set_yticks([])
        ax.set_ylabel(f"{op} latency (µs)")
        ax.set_title(f"{op}: {ios:,} I/Os", fontsize="medium", loc="left")
        _time_axis(ax, lo, hi)
    if legend:
        fig.legend(*legend, loc="outside lower center", ncols=4, fontsize="small")
    axes[-1].set_xlabel(f"time (UTC), {day.isoformat()}")
    fig.suptitle(f"drive {chart.host}/{chart.device} — {day.isoformat()} (UTC): latency percentiles per 5 minutes")
    _save(fig, chart.path)


# ---------------------------------------------------------------- the report


def build_report(settings: Settings, day: date, service: str | None = None, out_dir: Path | None = None,
                 progress: bool = False) -> Report:
    """Draw the day's charts and write the index; returns what was drawn.  ``ReportError`` for bad input or no data."""
    lo, hi = day_bounds(day)
    out_dir = Path(out_dir) if out_dir is not None else Path("reports") / day.isoformat()
    reader = ViewReader(settings.views_dir)
    try:
        con = reader.connection()
        horizon = queries.horizon(con)
        # Over a day whose minute windows retention deleted, hour (or day) rollups: a coarser step, never holes.
        report_step = max(STEP_S, queries.tier_span(lo, hi, queries.tier_cutoffs(con)).min_step)
        if service is not None and not (NAME_RE.match(service) and queries.service_exists(con, service, horizon)):
            raise ReportError(f"unknown service {service!r}: it has never sent a message (see `healthmon top` for the list)", 2)
        day_services = queries.summary(con, lo, hi, horizon, service)
        drives = [] if service is not None else [
            (d["host"], d["device"]) for d in queries.disks(con, horizon) if d["last_ts"] is not None and d["last_ts"] >= lo
        ]
        work = [("service", row) for row in day_services] + [("drive", d) for d in drives]
        report = Report(day, out_dir, out_dir / INDEX_FILE, report_step)
        bar = tqdm(total=len(work), unit="chart", desc=f"report {day.isoformat()}", disable=not progress)
        for kind, item in work:
            if kind == "service":
                out_dir.mkdir(parents=True, exist_ok=True)
                report.services.append(_service_chart(con, item, lo, hi, horizon, report_step, day, out_dir))
            else:
                chart = _drive_chart(con, *item, lo, hi, horizon, report_step, day, out_dir)
                if chart is not None:
                    report.drives.append(chart)
            bar.update()
        bar.close()
    finally:
        reader.close_all()
    if not report.services and not report.drives:
        what = f"service {service!r}" if service else "any service or drive"
        raise ReportError(f"no data for {what} on {day.isoformat()} (UTC) in the views at {settings.views_dir}", 1)
    _write_index(report, lo, hi, horizon)
    return report


def _service_chart(con, row: dict, lo: int, hi: int, horizon: int, step: int, day: date, out_dir: Path) -> ServiceChart:
    name = row["service"]
    ts, count, metrics = service_series(con, name, lo, hi, horizon, step)
    totals = {"messages": row["count"]}
    for m in HEALTH_METRICS:
        totals[m] = {"avg": row[f"{m}_sum"] / row["count"], "max": row[f"{m}_max"]}
    chart = ServiceChart(name, out_dir / f"service-{file_part(name)}.png", ts, count, metrics, totals)
    draw_service(chart, day, lo, hi)
    return chart


def _drive_chart(con, host: str, device: str, lo: int, hi: int, horizon: int, step: int, day: date,
                 out_dir: Path) -> DriveChart | None:
    counts, latencies = {}, {}
    for op in OPS:
        counts[op], latencies[op] = drive_series(con, host, device, op, lo, hi, horizon, step)
    if not any(c.sum() for c in counts.values()):
        return None
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"drive-{file_part(host)}-{file_part(device)}.png"
    chart = DriveChart(host, device, path, np.arange(lo, hi, step, dtype=np.int64), counts, latencies)
    draw_drive(chart, day, lo, hi)
    return chart


def _write_index(report: Report, lo: int, hi: int, horizon: int) -> None:
    index = {
        "date": report.day.isoformat(), "from": iso(lo), "to": iso(hi), "step_s": report.step_s,
        "horizon": iso(horizon) if horizon else None, "generated_at": iso(round(time.time())),
        "services": [{"service": c.service, "file": c.path.name, **c.totals} for c in report.services],
        "drives": [
            {"host": c.host, "device": c.device, "file": c.path.name, "ios": {op: int(c.count[op].sum()) for op in OPS}}
            for c in report.drives
        ],
    }
    report.index.write_text(json.dumps(index, indent=2) + "\n")


def run(settings: Settings, args) -> int:
    """``healthmon report``: the charts of ``args.date`` (a ``date``), optionally of ``args.service`` only, into ``args.out``."""
    try:
        report = build_report(settings, args.date, args.service, args.out, progress=True)
    except ReportError as exc:
        print(f"healthmon report: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"{len(report.services)} service charts and {len(report.drives)} drive charts for {report.day.isoformat()} "
          f"in {report.out_dir}/ (index: {report.index.name})")
    return 0
