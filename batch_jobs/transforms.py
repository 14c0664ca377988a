"""Spark transforms, pure ``DataFrame -> DataFrame`` functions.

The batch build and the streaming job's ``foreachBatch`` apply the very same
functions, so both layers aggregate a message identically.  Output columns of
``health_windows`` are exactly ``healthmon.views.HEALTH_COLUMNS``.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from healthmon.schema import HEALTH_METRICS
from healthmon.views import HEALTH_COLUMNS


def _used_pct(free: str, total: str) -> Column:
    """Used share of a capacity in percent; 0 when the total is 0 (see schema)."""
    return F.when(F.col(total) > 0, (F.col(total) - F.col(free)) / F.col(total) * 100.0).otherwise(F.lit(0.0))


def health_measures(raw: DataFrame) -> DataFrame:
    """Landed health lines -> (service, ts, cpu_pct, ram_used_pct, disk_used_pct)."""
    return raw.select(
        "service",
        "ts",
        F.col("cpu_pct").cast("double").alias("cpu_pct"),
        _used_pct("ram_free_gb", "ram_total_gb").alias("ram_used_pct"),
        _used_pct("disk_free_gb", "disk_total_gb").alias("disk_used_pct"),
    )


def with_window_start(df: DataFrame, window_s: int, ts_col: str = "ts") -> DataFrame:
    """Adds ``window_start``: epoch seconds of the base window holding ``ts`` (UTC)."""
    return df.withColumn("window_start", (F.floor(F.col(ts_col) / window_s) * window_s).cast("long"))


def health_windows(raw: DataFrame, window_s: int) -> DataFrame:
    """Landed health lines -> one row per (service, window) of mergeable aggregates."""
    measures = with_window_start(health_measures(raw), window_s)
    aggs = [F.count(F.lit(1)).cast("long").alias("count")]
    for m in HEALTH_METRICS:
        aggs += [
            F.sum(m).alias(f"{m}_sum"),
            F.min(m).alias(f"{m}_min"),
            F.max(m).alias(f"{m}_max"),
            F.max_by(m, "ts").alias(f"{m}_last"),
        ]
    aggs.append(F.max("ts").alias("last_ts"))
    return measures.groupBy("service", "window_start").agg(*aggs).select(*HEALTH_COLUMNS)


def with_hour_partition(raw: DataFrame) -> DataFrame:
    """Adds ``date`` (YYYY-MM-DD) and ``hour`` (HH) of ``ts`` in UTC: master's partition columns."""
    stamp = F.timestamp_seconds(F.col("ts"))
    return raw.withColumn("date", F.date_format(stamp, "yyyy-MM-dd")).withColumn("hour", F.date_format(stamp, "HH"))


def complete_lines(raw: DataFrame) -> DataFrame:
    """Lines that carry a service and a ts (the streaming source reads leniently)."""
    return raw.where(F.col("service").isNotNull() & F.col("ts").isNotNull())


def dedupe_messages(raw: DataFrame) -> DataFrame:
    """One row per message id (a segment shipped twice must not count twice)."""
    return raw.dropDuplicates(["id"])
