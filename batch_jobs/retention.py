"""Retention: delete landed raw and master hours older than the configured days.

Run by the scheduler every ``retention_interval_s``.  A raw hour of a type
that views aggregate is deleted only once the batch view has built it (it is
below the horizon and recorded in ``view_inputs``), so retention never
removes data that no view has counted; raw hours of other types (host_info)
and master hours are deleted by age alone.  The views keep their windows (their
own retention comes with downsampling).
"""

from __future__ import annotations

import logging
import time

import duckdb

from healthmon.config import Settings
from healthmon.landing import LandingStore, hour_of_partition, master_dir, raw_dir
from healthmon.schema import MESSAGE_TYPES
from healthmon.views import BATCH_VIEW, VIEWED_TYPES, read_horizon

log = logging.getLogger(__name__)

DAY_S = 86400


def hour_dirs(store: LandingStore, prefix: str) -> dict[int, str]:
    """Hour directories (``.../date=…/hour=…``) under ``prefix`` that hold files, by hour start."""
    out: dict[int, str] = {}
    for f in store.list_files(prefix):
        out.setdefault(hour_of_partition(f.path), f.path.rsplit("/", 1)[0])
    return out


def built_hours(settings: Settings, msg_type: str) -> tuple[int, set[int]]:
    """The batch view's horizon and the hours it has built for ``msg_type``."""
    view = settings.views_dir / BATCH_VIEW
    if not view.exists():
        return 0, set()
    con = duckdb.connect(str(view), read_only=True)
    try:
        horizon = read_horizon(con)
        hours = {h for (h,) in con.execute("SELECT hour_start FROM view_inputs WHERE msg_type = ?", [msg_type]).fetchall()}
    finally:
        con.close()
    return horizon, hours


def apply_retention(settings: Settings, store: LandingStore, now: float | None = None) -> dict:
    """Delete what is older than the retention settings; returns the hours deleted."""
    now = time.time() if now is None else now
    raw_cutoff = now - settings.retention_raw_days * DAY_S
    master_cutoff = now - settings.retention_master_days * DAY_S
    deleted = {"raw_hours": 0, "master_hours": 0, "raw_kept_unbuilt": 0}
    for msg_type in MESSAGE_TYPES:
        horizon, built = built_hours(settings, msg_type)
        for hour, directory in sorted(hour_dirs(store, raw_dir(msg_type)).items()):
            if hour + 3600 > raw_cutoff:
                continue
            if msg_type in VIEWED_TYPES and (hour >= horizon or hour not in built):
                deleted["raw_kept_unbuilt"] += 1
                continue
            store.delete(directory)
            deleted["raw_hours"] += 1
        for hour, directory in sorted(hour_dirs(store, master_dir(msg_type)).items()):
            if hour + 3600 <= master_cutoff:
                store.delete(directory)
                deleted["master_hours"] += 1
    if any(deleted.values()):
        log.info("retention: %s", deleted)
    return deleted
