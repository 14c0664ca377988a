"""The SparkSession builder used by every entry point (batch build, speed job, scheduler).

Only entry points call it: transforms take and return DataFrames and never
create a session.  Settings suit a small machine: few shuffle partitions, no
UI, UTC session time zone, local dirs under the data directory.
"""

from __future__ import annotations

import logging
import os

from healthmon.config import Settings

log = logging.getLogger(__name__)


def spark_session(settings: Settings, app_name: str):
    from pyspark.sql import SparkSession

    settings.spark_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PYSPARK_PYTHON", os.environ.get("PYSPARK_PYTHON", "python3"))
    builder = (
        SparkSession.builder.appName(app_name)
        .master(settings.spark_master)
        .config("spark.sql.shuffle.partitions", str(settings.spark_shuffle_partitions))
        .config("spark.default.parallelism", str(settings.spark_shuffle_partitions))
        .config("spark.driver.memory", settings.spark_driver_memory)
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.local.dir", str(settings.spark_dir / "tmp"))
        .config("spark.sql.warehouse.dir", str(settings.spark_dir / "warehouse"))
        .config("spark.sql.sources.partitionOverwriteMode", "dynamic")
        .config("spark.sql.streaming.forceDeleteTempCheckpointLocation", "true")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
    )
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    log.info("Spark %s session %r on %s", spark.version, app_name, settings.spark_master)
    return spark
