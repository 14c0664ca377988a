"""Retention over a real (local) landing store and a real batch view file."""

from __future__ import annotations

import dataclasses

import pytest

from batch_jobs.retention import apply_retention
from healthmon.config import load_settings
from healthmon.landing import landing_for, master_hour_dir, raw_segment_path
from healthmon.views import BATCH_VIEW, update_view

NOW = 1_790_000_000.0
HOUR = 3600
DAY = 86400


@pytest.mark.parametrize("landing", ["file", pytest.param("hdfs", marks=[pytest.mark.hdfs, pytest.mark.slow])])
def test_deletes_old_built_raw_hours_and_old_master_hours_only(tmp_path, landing, request):
    settings = load_settings({"data_dir": str(tmp_path), "retention_raw_days": 2, "retention_master_days": 10}, environ={})
    if landing == "hdfs":
        cluster, _env = request.getfixturevalue("local_hdfs")
        settings = dataclasses.replace(cluster, data_dir=str(tmp_path), landing=f"{cluster.landing}-retention",
                                       retention_raw_days=2, retention_master_days=10)
    store = landing_for(settings)
    base = int(NOW // HOUR) * HOUR
    old_built, old_unbuilt, recent = base - 3 * DAY, base - 3 * DAY + HOUR, base - DAY
    for hour in (old_built, old_unbuilt, recent):
        store.publish(raw_segment_path("health", hour, f"c1-1-{hour}"), b'{"x": 1}\n')
    old_master, kept_master = base - 11 * DAY, base - 9 * DAY
    for hour in (old_master, kept_master):
        store.publish(f"{master_hour_dir('health', hour)}/part-0.parquet", b"PAR1")

    def built(con):
        con.execute("INSERT INTO view_meta VALUES (?, 0, 60, 'b', 0, 0)", [base])
        con.execute("INSERT INTO view_inputs VALUES ('health', ?, 'f', 1, 1), ('health', ?, 'f', 1, 1)", [old_built, recent])

    update_view(settings.views_dir / BATCH_VIEW, built)
    deleted = apply_retention(settings, store, now=NOW)
    assert deleted == {"raw_hours": 1, "master_hours": 1, "raw_kept_unbuilt": 1}
    remaining = {f.path for f in store.list_files("")}
    assert remaining == {
        raw_segment_path("health", old_unbuilt, f"c1-1-{old_unbuilt}"),
        raw_segment_path("health", recent, f"c1-1-{recent}"),
        f"{master_hour_dir('health', kept_master)}/part-0.parquet",
    }
    assert apply_retention(settings, store, now=NOW) == {"raw_hours": 0, "master_hours": 0, "raw_kept_unbuilt": 1}
