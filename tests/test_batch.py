"""The batch build with real Spark (local mode) and real DuckDB files."""

from __future__ import annotations

import random

import duckdb
import pyarrow.parquet as pq
import pytest

from batch_jobs.build import build, closed_horizon
from healthmon.config import load_settings
from healthmon.landing import landing_for, raw_segment_path
from healthmon.schema import landed_line
from healthmon.spark import spark_session
from healthmon.views import BATCH_VIEW

pytestmark = [pytest.mark.slow, pytest.mark.spark]

HOUR = 3600
NOW = 1_790_000_000.0  # a fixed clock: 2026-09-21T13:33:20Z
FIRST_HOUR = int(NOW // HOUR) * HOUR - 3 * HOUR


@pytest.fixture(scope="module")
def spark(tmp_path_factory):
    settings = load_settings({"data_dir": str(tmp_path_factory.mktemp("spark"))}, environ={})
    session = spark_session(settings, "healthmon-test-batch")
    yield session
    session.stop()


def make_lines(hour: int, count: int, seed: int, prefix: str) -> tuple[bytes, list[dict]]:
    rng = random.Random(seed)
    messages = []
    for i in range(count):
        messages.append(
            {
                "type": "health",
                "service": f"svc{i % 3}",
                "ts": hour + rng.uniform(0, HOUR - 1),
                "cpu_pct": rng.uniform(0, 100),
                "ram_total_gb": 32,
                "ram_free_gb": rng.uniform(0, 32),
                "disk_total_gb": 100,
                "disk_free_gb": rng.uniform(0, 100),
            }
        )
    data = b"".join(landed_line(m, f"{prefix}-{i}", NOW) for i, m in enumerate(messages))
    return data, messages


def totals(view, table: str) -> dict[str, tuple]:
    con = duckdb.connect(str(view), read_only=True)
    try:
        rows = con.execute(f"SELECT service, sum(count), sum(cpu_pct_sum), max(cpu_pct_max) FROM {table} GROUP BY service").fetchall()
    finally:
        con.close()
    return {r[0]: (int(r[1]), r[2], r[3]) for r in rows}


def expected_totals(messages: list[dict]) -> dict[str, tuple]:
    out: dict[str, list] = {}
    for m in messages:
        entry = out.setdefault(m["service"], [0, 0.0, 0.0])
        entry[0] += 1
        entry[1] += m["cpu_pct"]
        entry[2] = max(entry[2], m["cpu_pct"])
    return {k: tuple(v) for k, v in out.items()}


def assert_totals(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for service, (count, cpu_sum, cpu_max) in want.items():
        assert got[service][0] == count
        assert got[service][1] == pytest.approx(cpu_sum, rel=1e-12)
        assert got[service][2] == pytest.approx(cpu_max, rel=1e-12)


def test_incremental_build_rebuilds_only_changed_hours(spark, tmp_path):
    settings = load_settings({"data_dir": str(tmp_path), "batch_lateness_s": 300}, environ={})
    store = landing_for(settings)
    sent: list[dict] = []
    for k in range(3):
        hour = FIRST_HOUR + k * HOUR
        data, messages = make_lines(hour, 200, seed=k, prefix=f"h{k}")
        store.publish(raw_segment_path("health", hour, f"c1-1-{k:06d}"), data)
        sent += messages
    # A message in the open hour: not built, the horizon stops before it.
    open_hour = int(NOW // HOUR) * HOUR
    data, _ = make_lines(open_hour, 5, seed=9, prefix="open")
    store.publish(raw_segment_path("health", open_hour, "c1-1-000099"), data)

    first = build(spark, settings, store, now=NOW)
    assert first["horizon"] == closed_horizon(NOW, 300) == open_hour
    assert first["hours_rebuilt"] == 3
    view = settings.views_dir / BATCH_VIEW
    for table in ("health_window", "health_hour", "health_day"):
        assert_totals(totals(view, table), expected_totals(sent))

    # Nothing changed: the same file stays published (the API's cached answers stay valid).
    published = view.stat()
    again = build(spark, settings, store, now=NOW)
    assert again["hours_rebuilt"] == 0 and again["rows_written"] == 0 and not again["published"]
    assert (view.stat().st_ino, view.stat().st_mtime_ns) == (published.st_ino, published.st_mtime_ns)

    # A late segment for the first hour, and the same segment shipped twice under another name.
    data, late = make_lines(FIRST_HOUR, 30, seed=42, prefix="late")
    store.publish(raw_segment_path("health", FIRST_HOUR, "c1-2-000001"), data)
    store.publish(raw_segment_path("health", FIRST_HOUR, "c1-2-000002"), data)
    third = build(spark, settings, store, now=NOW)
    assert third["hours_rebuilt"] == 1 and third["published"]
    assert view.stat().st_ino != published.st_ino
    for table in ("health_window", "health_hour", "health_day"):
        assert_totals(totals(view, table), expected_totals(sent + late))

    # Master holds every message of the closed hours exactly once (compaction is idempotent).
    master = pq.read_table(str(tmp_path / "landing" / "master" / "type=health"))
    ids = master.column("id").to_pylist()
    assert len(ids) == len(set(ids)) == len(sent) + len(late)

    # The horizon moving is a change even with no new file: the open hour is built and published.
    fourth = build(spark, settings, store, now=NOW + HOUR)
    assert fourth["published"] and fourth["horizon"] == open_hour + HOUR and fourth["hours_rebuilt"] == 1


def test_failed_build_publishes_nothing(spark, tmp_path):
    settings = load_settings({"data_dir": str(tmp_path)}, environ={})
    store = landing_for(settings)
    data, _ = make_lines(FIRST_HOUR, 10, seed=1, prefix="ok")
    store.publish(raw_segment_path("health", FIRST_HOUR, "c1-1-000001"), data)
    build(spark, settings, store, now=NOW)
    view = settings.views_dir / BATCH_VIEW
    before = view.read_bytes()
    # A raw file that is not JSON lines of the schema makes Spark fail in this hour.
    store.publish(raw_segment_path("health", FIRST_HOUR + HOUR, "c1-1-000002"), b'{"id": "x", "ts": "oops"')
    store.publish(raw_segment_path("health", FIRST_HOUR + HOUR, "c1-1-000003"), b"\x00" * 10)
    with pytest.raises(Exception):  # noqa: B017 - any failure; what matters is what stays published
        build(spark, settings, store, now=NOW + 2 * HOUR)
    assert view.read_bytes() == before
    assert not [p for p in view.parent.iterdir() if p.name.endswith(".tmp")]
