"""The SparkSession builder used by every entry point (batch build, speed job, scheduler).

Only entry points call it: transforms take and return DataFrames and never
create a session.  Settings suit a small machine: few shuffle partitions, no
UI, UTC session time zone, local dirs under the data directory.
"""

from __future__ import annotations

import logging

from healthmon.config import Settings

log = logging.getLogger(__name__)


def spark_session(settings: Settings, app_name: str):
    from pyspark import SparkConf, SparkContext
    from pyspark.java_gateway import launch_gateway
    from pyspark.sql import SparkSession

    settings.spark_dir.mkdir(parents=True, exist_ok=True)
    conf = SparkConf().setAppName(app_name).setMaster(settings.spark_master).setAll(
        [
            ("spark.sql.shuffle.partitions", str(settings.spark_shuffle_partitions)),
            ("spark.default.parallelism", str(settings.spark_shuffle_partitions)),
            ("spark.driver.memory", settings.spark_driver_memory),
            ("spark.sql.session.timeZone", "UTC"),
            ("spark.ui.enabled", "false"),
            ("spark.ui.showConsoleProgress", "false"),
            ("spark.local.dir", str(settings.spark_dir / "tmp")),
            ("spark.sql.warehouse.dir", str(settings.spark_dir / "warehouse")),
            ("spark.sql.sources.partitionOverwriteMode", "dynamic"),
        ]
    )
    if settings.spark_master.startswith("local"):
        # Local mode: the driver listens on loopback only.  On a cluster, executors must reach the driver,
        # so Spark's default (this host's address) stays.
        conf.setAll([("spark.driver.host", "127.0.0.1"), ("spark.driver.bindAddress", "127.0.0.1")])
    if SparkContext._gateway is None:
        # The JVM gets its own session, so a SIGTERM/SIGINT sent to our process group (a supervisor,
        # Ctrl-C) reaches only this Python process, which then stops Spark in order.  The JVM still
        # exits with us: it ends when its stdin pipe from this process closes.
        SparkContext._ensure_initialized(gateway=launch_gateway(conf, popen_kwargs={"start_new_session": True}))
    spark = SparkSession.builder.config(conf=conf).getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    log.info("Spark %s session %r on %s", spark.version, app_name, settings.spark_master)
    return spark
