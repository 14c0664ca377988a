"""The SparkSession builder used by every entry point (batch build, speed job, scheduler).

Only entry points call it: transforms take and return DataFrames and never
create a session.  Settings suit a small machine: few shuffle partitions, no
UI, UTC session time zone, local dirs under the data directory; and many
small files (``RAW_OPEN_COST_BYTES``, ``LOCAL_FILE_SYSTEM``), which is what
the collector lands.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator

from healthmon.config import Settings

log = logging.getLogger(__name__)

RAW_OPEN_COST_BYTES = 64 * 1024
"""spark.sql.files.openCostInBytes: about the bytes of JSON Spark parses in the time it takes to open a file."""
LOCAL_FILE_SYSTEM = "org.apache.hadoop.fs.RawLocalFileSystem"
"""Hadoop's file:// implementation: without the checksum layer, which looks for a .crc file beside every file it opens."""


class StartAborted(Exception):
    """SIGTERM/SIGINT came while a long-lived process was still starting Spark."""


@contextlib.contextmanager
def stop_aborts_start(stop: threading.Event) -> Iterator[None]:
    """Within: SIGTERM/SIGINT set ``stop`` and raise ``StartAborted`` in the main thread.

    A cold SparkSession takes 7-11 s (more on a busy machine) and a stop must
    take seconds, so a process that is told to stop while Spark starts gives
    up the start; the JVM, whose stdin pipe closes with this process, exits too.
    """

    def abort(_signum, _frame):
        stop.set()
        raise StartAborted

    previous = {sig: signal.signal(sig, abort) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def spark_session(settings: Settings, app_name: str):
    """A SparkSession for ``settings``, started in a helper thread while this one waits.

    So an exception that a signal handler raises in this thread
    (``stop_aborts_start``) never goes through pyspark or py4j, which would
    retry the call it interrupts, or remove the file that the starting JVM is
    about to write its port to (that JVM would then live on, orphaned).
    """
    outcome: dict = {}

    def start() -> None:
        try:
            outcome["spark"] = _start_session(settings, app_name)
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            outcome["error"] = exc

    helper = threading.Thread(target=start, name="spark-start", daemon=True)
    helper.start()
    while helper.is_alive():
        helper.join(0.1)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["spark"]


def _start_session(settings: Settings, app_name: str):
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
            # Landing segments are small and many (up to 7,200 an hour at segment_max_seconds=0.5): with Spark's default
            # open cost (4 MiB) every ~30 of them make a task of their own, and task overheads take half a build.
            ("spark.sql.files.openCostInBytes", str(RAW_OPEN_COST_BYTES)),
            # Per file opened and written: no .crc lookup on read, no .crc file beside each Parquet part.
            ("spark.hadoop.fs.file.impl", LOCAL_FILE_SYSTEM),
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
