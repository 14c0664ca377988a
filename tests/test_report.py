"""``healthmon report``: one UTC day's PNG charts from real view files, the plotted numbers checked against the messages.

The batch view (horizon at 14:00 of the day) and the real-time view (from
12:00: two hours not expired yet) are real DuckDB files built from known
health and disk_latency messages; the report must plot exactly what a plain
computation over those messages gives, per 5-minute bucket of the day, and
nothing of the days around it.
"""

from __future__ import annotations

import json
import math
import random
import subprocess
from datetime import date
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from healthmon import cli
from healthmon.config import load_settings
from healthmon.report import STEP_S, build_report
from healthmon.schema import HEALTH_METRICS, disk_latency_message
from healthmon.sketch import LatencySketch
from healthmon.views import BATCH_VIEW, DISK_LATENCY, DISK_LATENCY_BUCKET, REALTIME_VIEW, update_view
from tests.procs import HEALTHMON, healthmon_env
from tests.test_merge_rule import (
    disk_window_rows,
    expected_series,
    insert_table,
    make_messages,
    message,
    publish_batch,
    publish_realtime,
)

HOUR = 3600
DAY = date(2024, 1, 1)
D0 = 1704067200  # 2024-01-01T00:00:00Z
D1 = D0 + 86400
HORIZON = D0 + 14 * HOUR
RT_FROM = D0 + 12 * HOUR
W = 60
DRIVES = (("host-a", "nvme0n1", ("read", "write")), ("host-b", "sda", ("read",)))


def _health() -> list[dict]:
    msgs = make_messages(D0 - 2 * HOUR, D1 + 2 * HOUR, services=("alpha", "beta"), seed=7, mean_gap=90)
    # beta is silent from 03:00 to 09:00: empty buckets, gaps in its chart.
    msgs = [m for m in msgs if not (m["service"] == "beta" and D0 + 3 * HOUR <= m["ts"] < D0 + 9 * HOUR)]
    return msgs + [
        message("alpha", D0, 5.0), message("alpha", D1 - 0.001, 95.0),  # the first and last instants of the day
        message("alpha", D1, 77.0), message("alpha", D0 - 0.001, 66.0),  # the days around it: not in the report
        message("gamma", D0 - 5 * HOUR, 10.0),  # known, but silent on the day
    ]


def _disks() -> list[dict]:
    """disk_latency messages every 2 minutes per drive and op, with real sketches; host-a's writes slow down at 18:00."""
    rng = random.Random(13)
    out = []
    for host, device, ops in DRIVES:
        for op in ops:
            ts = D0 - HOUR + 30
            while ts < D1 + HOUR:
                sketch = LatencySketch()
                slow = 8.0 if (host, op) == ("host-a", "write") and ts >= D0 + 18 * HOUR else 1.0
                for _ in range(rng.randint(0, 25)):  # an interval may have no I/O at all
                    sketch.add(rng.lognormvariate(math.log(150), 0.6) * slow)
                out.append(disk_latency_message(host, device, op, float(ts), 120.0, sketch, source="mock"))
                ts += 120
    return out


HEALTH_MESSAGES = _health()
DISK_MESSAGES = _disks()


def add_disk_rows(view_path: Path, messages: list[dict], keep) -> None:
    """Add the window and sketch rows of ``messages`` whose window start passes ``keep`` to a published view."""
    windows, buckets = disk_window_rows(messages)

    def change(con):
        for spec, rows in ((DISK_LATENCY, windows), (DISK_LATENCY_BUCKET, buckets)):
            insert_table(con, spec.table(), spec.columns, [r for r in rows if keep(r["window_start"])])

    update_view(view_path, change)


def publish_views(views_dir: Path, health: list[dict], disks: list[dict], horizon: int, rt_from: int) -> None:
    """Both views: batch below ``horizon``, real-time from ``rt_from`` (health and drive latency)."""
    publish_batch(views_dir, health, horizon)
    publish_realtime(views_dir, health, rt_from)
    add_disk_rows(views_dir / BATCH_VIEW, disks, lambda ws: ws < horizon)
    add_disk_rows(views_dir / REALTIME_VIEW, disks, lambda ws: ws >= rt_from)


@pytest.fixture(scope="module")
def data_env(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("report")
    settings = load_settings({"data_dir": str(data_dir)}, environ={})
    publish_views(settings.views_dir, HEALTH_MESSAGES, DISK_MESSAGES, HORIZON, RT_FROM)
    return settings


@pytest.fixture(scope="module")
def report(data_env, tmp_path_factory):
    return build_report(data_env, DAY, out_dir=tmp_path_factory.mktemp("out") / "day")


def assert_png(path: Path, width: int, height: int) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(path)
    assert image.shape[:2] == (height, width)
    assert image[..., :3].std() > 0.05  # not a blank canvas


def assert_array(got: np.ndarray, expected: list, rel: float = 1e-9) -> None:
    expected = np.array([np.nan if v is None else v for v in expected], dtype=float)
    assert got.shape == expected.shape
    assert np.array_equal(np.isnan(got), np.isnan(expected))
    np.testing.assert_allclose(got[~np.isnan(got)], expected[~np.isnan(expected)], rtol=rel)


# ---------------------------------------------------------------- the report over real views


def test_one_png_per_service_and_drive_and_an_index(report):
    names = sorted(p.name for p in report.out_dir.iterdir())
    assert names == ["drive-host-a-nvme0n1.png", "drive-host-b-sda.png", "service-alpha.png", "service-beta.png", "summary.json"]
    for chart in report.services:
        assert_png(chart.path, 1100, 850)
    for chart in report.drives:
        assert_png(chart.path, 1100, 700)
    index = json.loads(report.index.read_text())
    assert index["date"] == "2024-01-01" and index["from"] == "2024-01-01T00:00:00Z" and index["to"] == "2024-01-02T00:00:00Z"
    assert index["horizon"] == "2024-01-01T14:00:00Z" and index["step_s"] == STEP_S
    on_day = [m for m in HEALTH_MESSAGES if D0 <= m["ts"] < D1]
    for item in index["services"]:
        mine = [m for m in on_day if m["service"] == item["service"]]
        assert item["messages"] == len(mine)
        assert item["file"] == f"service-{item['service']}.png"
        for m in HEALTH_METRICS:
            assert item[m]["avg"] == pytest.approx(sum(x[m] for x in mine) / len(mine), rel=1e-9)
            assert item[m]["max"] == max(x[m] for x in mine)
    assert [s["service"] for s in index["services"]] == ["alpha", "beta"]
    ios = {(d["host"], d["device"]): d["ios"] for d in index["drives"]}
    for (host, device), by_op in ios.items():
        for op, n in by_op.items():
            assert n == sum(m["count"] for m in DISK_MESSAGES
                            if (m["host"], m["device"], m["op"]) == (host, device, op) and D0 <= m["ts"] // W * W < D1)
    assert ios[("host-b", "sda")]["write"] == 0 and ios[("host-a", "nvme0n1")]["write"] > 0


@pytest.mark.parametrize("service", ["alpha", "beta"])
def test_service_charts_plot_the_merged_numbers(report, service):
    chart = next(c for c in report.services if c.service == service)
    expected = expected_series(HEALTH_MESSAGES, service, D0, D1, STEP_S)
    assert len(expected) == 288
    assert chart.ts.tolist() == [p["ts"] for p in expected]
    assert chart.count.tolist() == [p["count"] for p in expected]
    for m in HEALTH_METRICS:
        for agg in ("avg", "min", "max"):
            assert_array(chart.metrics[m][agg], [p[m][agg] for p in expected])
    if service == "alpha":  # the day's first and last instants are in; the instants just outside are not
        assert chart.metrics["cpu_pct"]["min"][0] == 5.0 and chart.metrics["cpu_pct"]["max"][-1] == 95.0
    else:  # beta's silence is a gap
        assert np.isnan(chart.metrics["cpu_pct"]["avg"][3 * 12:9 * 12]).all()


def test_drive_charts_plot_percentiles_of_the_merged_sketches(report):
    assert [(c.host, c.device) for c in report.drives] == [("host-a", "nvme0n1"), ("host-b", "sda")]
    for chart in report.drives:
        assert chart.ts.tolist() == list(range(D0, D1, STEP_S))
        for op in ("read", "write"):
            merged = [LatencySketch() for _ in range(288)]
            for m in DISK_MESSAGES:
                ws = m["ts"] // W * W
                if (m["host"], m["device"], m["op"]) == (chart.host, chart.device, op) and D0 <= ws < D1:
                    merged[int(ws - D0) // STEP_S].merge(LatencySketch.from_pairs(m["buckets"], m["sum_us"], m["max_us"]))
            assert chart.count[op].tolist() == [s.count for s in merged]
            for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
                assert_array(chart.latency[op][name], [s.quantile(q) for s in merged], rel=0)
            assert_array(chart.latency[op]["mean"], [s.sum_us / s.count if s.count else None for s in merged])
    slow = next(c for c in report.drives if c.host == "host-a").latency["write"]["p99"]
    assert np.nanmedian(slow[18 * 12:]) > 4 * np.nanmedian(slow[:18 * 12])  # the slowdown shows


# ---------------------------------------------------------------- the command


@pytest.mark.slow
def test_command_one_service_with_progress(data_env, tmp_path):
    out = tmp_path / "one"
    done = subprocess.run([*HEALTHMON, "report", "--date", "01-01-2024", "--service", "beta", "--out", str(out)],
                          env=healthmon_env({"HEALTHMON_DATA_DIR": str(data_env.data_path)}), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["service-beta.png", "summary.json"]
    assert_png(out / "service-beta.png", 1100, 850)
    assert "report 2024-01-01" in done.stderr and "1/1" in done.stderr  # tqdm's bar
    assert "1 service charts and 0 drive charts for 2024-01-01" in done.stdout


def test_default_out_dir_is_under_the_current_directory(data_env, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["report", "--data-dir", str(data_env.data_path), "--date", "1-1-2024", "--service", "alpha"]) == 0
    assert (tmp_path / "reports" / "2024-01-01" / "service-alpha.png").is_file()


@pytest.mark.parametrize("bad", ["2024-01-01", "32-01-2024", "01-13-2024", "01-01-24", "yesterday", ""])
def test_bad_date_exits_2_naming_the_option(data_env, bad, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["report", "--data-dir", str(data_env.data_path), "--date", bad])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "argument --date" in err and "DD-MM-YYYY" in err


@pytest.mark.parametrize(
    "args,code,text",
    [
        (["--date", "01-01-2024", "--service", "nobody"], 2, "unknown service 'nobody'"),
        (["--date", "01-01-2024", "--service", "bad name!"], 2, "unknown service 'bad name!'"),
        (["--date", "01-01-2024", "--service", "gamma"], 1, "no data for service 'gamma' on 2024-01-01"),
        (["--date", "05-01-2024"], 1, "no data for any service or drive on 2024-01-05"),
    ],
)
def test_unknown_service_and_empty_day_write_nothing(data_env, tmp_path, capsys, args, code, text):
    out = tmp_path / "none"
    assert cli.main(["report", "--data-dir", str(data_env.data_path), "--out", str(out), *args]) == code
    assert text in capsys.readouterr().err
    assert not out.exists()
