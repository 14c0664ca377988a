"""Spark transforms, pure ``DataFrame -> DataFrame`` functions.

The batch build and the streaming job's ``foreachBatch`` apply the very same
functions, so both layers aggregate a message identically.  Each view
transform's output columns are exactly those of its ``healthmon.views``
table family; ``VIEW_TRANSFORMS`` says which transforms feed which tables for
each message type.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from healthmon.schema import HEALTH_METRICS
from healthmon.views import DISK_LATENCY, DISK_LATENCY_BUCKET, HEALTH, HEALTH_COLUMNS, VIEWED_TYPES, AggTable


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


def complete_lines(raw: DataFrame, columns: tuple[str, ...] = ("service", "ts")) -> DataFrame:
    """Lines that carry every one of ``columns`` (the streaming source reads leniently)."""
    condition = F.lit(True)
    for name in columns:
        condition = condition & F.col(name).isNotNull()
    return raw.where(condition)


def dedupe_messages(raw: DataFrame) -> DataFrame:
    """One row per message id (a segment shipped twice must not count twice)."""
    return raw.dropDuplicates(["id"])


def disk_latency_windows(raw: DataFrame, window_s: int) -> DataFrame:
    """Landed disk_latency lines -> one row per (host, device, op, window): count, sum, max, source."""
    lines = with_window_start(raw, window_s)
    has_sketch = F.size(F.coalesce(F.col("buckets"), F.array())) > 0
    return (
        lines.groupBy("host", "device", "op", "window_start")
        .agg(
            F.count(F.lit(1)).cast("long").alias("messages"),
            F.sum(F.col("count").cast("long")).alias("count"),
            F.sum("sum_us").alias("sum_us"),
            F.max("max_us").alias("max_us"),
            F.sum(F.when(has_sketch, F.col("count").cast("long")).otherwise(F.lit(0))).alias("sketched_count"),
            F.max_by("source", "ts").alias("source"),
            F.max("ts").alias("last_ts"),
        )
        .select(*DISK_LATENCY.columns)
    )


def disk_latency_buckets(raw: DataFrame, window_s: int) -> DataFrame:
    """Landed disk_latency lines -> one row per (host, device, op, window, sketch bucket): summed counts."""
    pairs = with_window_start(raw, window_s).select("host", "device", "op", "window_start", F.explode("buckets").alias("pair"))
    return (
        pairs.groupBy("host", "device", "op", "window_start", F.col("pair")[0].cast("int").alias("bucket"))
        .agg(F.sum(F.col("pair")[1]).cast("long").alias("count"))
        .select(*DISK_LATENCY_BUCKET.columns)
    )


# Message type -> (view table family, transform) pairs: what the batch build and the speed job compute.
VIEW_TRANSFORMS: dict[str, tuple[tuple[AggTable, object], ...]] = {
    "health": ((HEALTH, health_windows),),
    "disk_latency": ((DISK_LATENCY, disk_latency_windows), (DISK_LATENCY_BUCKET, disk_latency_buckets)),
}


assert tuple(VIEW_TRANSFORMS) == VIEWED_TYPES


def required_columns(msg_type: str) -> tuple[str, ...]:
    """Columns a landed line must carry to be aggregated (the streaming source reads leniently)."""
    return ("service", "ts") if msg_type == "health" else ("host", "device", "op", "ts")
