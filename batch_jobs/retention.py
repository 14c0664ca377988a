"""Retention: landed raw and master hours, and the batch view's tiers, deleted by age.

Run by the scheduler every ``retention_interval_s``.

Landing store: a raw hour of a type that views aggregate is deleted only once
the batch view has built it (it is below the horizon and recorded in
``view_inputs``), so retention never removes data that no view has counted
— unless no build may ever count it any more (:func:`rebuildable`); raw hours
of other types (host_info) and master hours are deleted by age alone.

Batch view (downsampling): every table family (``healthmon.views.AGG_TABLES``)
keeps its minute windows ``retention_window_days``, its hour rollups
``retention_hour_days`` and its day rollups ``retention_day_days``.  The
cutoffs (:class:`TierCutoffs`) are whole hours for windows and whole days for
rollups, so a tier always ends where a coarser row starts, and never above the
horizon's hour/day, so the rows that the queries read for the newest partial
day are never deleted.  The deletion and the cutoffs it applied
(``view_retention``) are published together, atomically, like every change of
the view: the API reads the cutoffs to know exactly which tier is gone
(``serving.queries.tier_span``), and the batch build reads them to know which
hours it may still rebuild.

Why a later build never wipes a rollup: a build recomputes an hour's windows
from all raw files of that hour, the hour's rollup from those windows, and the
day's rollup from the day's hour rollups.  So deleted windows of an old hour
do no harm (the rebuild restores them; the next retention deletes them again),
but two things would: raw files of the hour pruned by raw retention (the hour
would be recomputed from the late files only), and hour rollups of the day
already deleted (the day would be recomputed from a few hours).  The build
therefore leaves such hours alone (:func:`rebuildable`); messages that arrive
that late are landed but not counted.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import duckdb

from healthmon.config import Settings
from healthmon.landing import HOUR_S, LandingStore, hour_of_partition, master_dir, raw_dir
from healthmon.schema import MESSAGE_TYPES
from healthmon.views import AGG_TABLES, BATCH_VIEW, GRAINS, VIEWED_TYPES, read_horizon, update_view

log = logging.getLogger(__name__)

DAY_S = 86400
VIEW_RETENTION = "view_retention"
"""Batch-view table of the tier cutoffs retention has applied: (grain, cutoff, applied_at)."""


def _floor(ts: float, unit: int) -> int:
    return int(ts // unit) * unit


@dataclass(frozen=True)
class TierCutoffs:
    """Batch-view rows of each grain with ``window_start`` below its cutoff are deleted (epoch seconds; 0: none)."""

    window: int = 0  # minute windows; an hour boundary
    hour: int = 0  # hour rollups; a day boundary
    day: int = 0  # day rollups; a day boundary

    def merged(self, other: TierCutoffs) -> TierCutoffs:
        """The later of each cutoff: what is deleted stays deleted."""
        return TierCutoffs(*(max(getattr(self, g), getattr(other, g)) for g in GRAINS))


def tier_cutoffs(settings: Settings, now: float, horizon: int) -> TierCutoffs:
    """The cutoffs of the retention settings at ``now``, never above the horizon's hour (windows) or day (rollups)."""
    horizon_day = _floor(horizon, DAY_S)
    return TierCutoffs(
        window=min(_floor(now - settings.retention_window_days * DAY_S, HOUR_S), horizon),
        hour=min(_floor(now - settings.retention_hour_days * DAY_S, DAY_S), horizon_day),
        day=min(_floor(now - settings.retention_day_days * DAY_S, DAY_S), horizon_day),
    )


def read_tier_cutoffs(con: duckdb.DuckDBPyConnection, catalog: str | None = None) -> TierCutoffs:
    """The cutoffs retention has applied to the batch view (on ``catalog``; default: the main database); zeros if none."""
    (exists,) = con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE database_name = coalesce(?, current_database()) AND table_name = ?",
        [catalog, VIEW_RETENTION],
    ).fetchone()
    if not exists:
        return TierCutoffs()
    q = f"{catalog}." if catalog else ""
    applied = dict(con.execute(f"SELECT grain, cutoff FROM {q}{VIEW_RETENTION}").fetchall())
    return TierCutoffs(*(int(applied.get(g) or 0) for g in GRAINS))


def raw_floor(settings: Settings, now: float) -> int:
    """Raw hours that were built and start below this may have been deleted (``retention_raw_days``)."""
    return _floor(now - settings.retention_raw_days * DAY_S, HOUR_S)


def rebuildable(hour: int, built_before: bool, tiers: TierCutoffs, oldest_raw: int) -> bool:
    """Whether a build of ``hour`` gives complete rollups: the day keeps all its hour rollups, and the raw files are all there.

    Retention deletes a raw hour only once built (or once it is no longer
    rebuildable, which lasts: cutoffs never move back), so an hour never built
    has all its raw files; one built before has them while it starts at or
    after ``oldest_raw`` (:func:`raw_floor` at the build's ``now``, which is
    not before any retention's).
    """
    return _floor(hour, DAY_S) >= tiers.hour and (not built_before or hour >= oldest_raw)


def hour_dirs(store: LandingStore, prefix: str) -> dict[int, str]:
    """Hour directories (``.../date=…/hour=…``) under ``prefix`` that hold files, by hour start."""
    out: dict[int, str] = {}
    for f in store.list_files(prefix):
        out.setdefault(hour_of_partition(f.path), f.path.rsplit("/", 1)[0])
    return out


def built_hours(settings: Settings, msg_type: str) -> tuple[int, set[int], TierCutoffs]:
    """The batch view's horizon, the hours it has built for ``msg_type`` and its applied tier cutoffs."""
    view = settings.views_dir / BATCH_VIEW
    if not view.exists():
        return 0, set(), TierCutoffs()
    con = duckdb.connect(str(view), read_only=True)
    try:
        horizon = read_horizon(con)
        hours = {h for (h,) in con.execute("SELECT hour_start FROM view_inputs WHERE msg_type = ?", [msg_type]).fetchall()}
        tiers = read_tier_cutoffs(con)
    finally:
        con.close()
    return horizon, hours, tiers


def apply_view_retention(settings: Settings, now: float) -> dict[str, int]:
    """Delete the batch view's expired windows and rollups, publish atomically; rows deleted per table."""
    view = settings.views_dir / BATCH_VIEW
    if not view.exists():
        return {}

    def change(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
        con.execute(f"CREATE TABLE IF NOT EXISTS {VIEW_RETENTION} (grain VARCHAR PRIMARY KEY, cutoff BIGINT, applied_at DOUBLE)")
        tiers = tier_cutoffs(settings, now, read_horizon(con)).merged(read_tier_cutoffs(con))
        deleted = {}
        for spec in AGG_TABLES:
            for grain in GRAINS:
                table, cutoff = spec.table(grain), getattr(tiers, grain)
                (count,) = con.execute(f"SELECT count(*) FROM {table} WHERE window_start < ?", [cutoff]).fetchone()
                if count:
                    con.execute(f"DELETE FROM {table} WHERE window_start < ?", [cutoff])
                deleted[table] = count
        for grain in GRAINS:
            con.execute(f"INSERT OR REPLACE INTO {VIEW_RETENTION} VALUES (?, ?, ?)", [grain, getattr(tiers, grain), now])
        return deleted

    return update_view(view, change)


def apply_retention(settings: Settings, store: LandingStore, now: float | None = None) -> dict:
    """Delete what is older than the retention settings; returns the hours (and view rows, per table) deleted."""
    now = time.time() if now is None else now
    view_rows = apply_view_retention(settings, now)
    oldest_raw = raw_floor(settings, now)
    master_cutoff = now - settings.retention_master_days * DAY_S
    deleted = {"raw_hours": 0, "master_hours": 0, "raw_kept_unbuilt": 0}
    for msg_type in MESSAGE_TYPES:
        horizon, built, tiers = built_hours(settings, msg_type)
        for hour, directory in sorted(hour_dirs(store, raw_dir(msg_type)).items()):
            if hour >= oldest_raw:
                continue
            unbuilt = hour >= horizon or hour not in built
            if msg_type in VIEWED_TYPES and unbuilt and rebuildable(hour, False, tiers, oldest_raw):
                deleted["raw_kept_unbuilt"] += 1
                continue
            store.delete(directory)
            deleted["raw_hours"] += 1
        for hour, directory in sorted(hour_dirs(store, master_dir(msg_type)).items()):
            if hour + HOUR_S <= master_cutoff:
                store.delete(directory)
                deleted["master_hours"] += 1
    if any(deleted.values()) or any(view_rows.values()):
        log.info("retention: %s, view rows %s", deleted, view_rows)
    return {**deleted, "view_rows": view_rows}
