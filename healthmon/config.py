"""One configuration for every healthmon process.

Settings are declared once, as a dataclass whose fields carry their help text
(Datasette-style).  Values come from the defaults, then from ``HEALTHMON_<NAME>``
environment variables, then from explicit overrides (a mapping, e.g. from the
command line).  Every value is converted and checked when the settings are
loaded, so a bad value stops the process at start with a message that names the
setting.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

ENV_PREFIX = "HEALTHMON_"


class ConfigError(ValueError):
    """A setting has a value that cannot be used; the message names it."""


def setting(default, help: str, *, minimum=None, maximum=None, choices=None):  # noqa: A002
    """Declare a setting: its default, its help text and its allowed values."""
    return field(
        default=default,
        metadata={"help": help, "minimum": minimum, "maximum": maximum, "choices": choices},
    )


@dataclass(frozen=True)
class Settings:
    """Every setting of healthmon, with its default and what it is for."""

    data_dir: str = setting("./var", "Directory that holds all local state: landing store (file://), views, spool, logs.")
    landing: str = setting("", "Landing store URL: file:///path or hdfs://host:port/path. Empty: file://<data_dir>/landing.")
    collector_id: str = setting("c1", "Name of this collector; part of every segment name and message id.")
    udp_host: str = setting("127.0.0.1", "Address the collector listens on for UDP datagrams.")
    udp_port: int = setting(3500, "UDP port of the collector.", minimum=0, maximum=65535)
    collector_processes: int = setting(1, "Receiver processes sharing the UDP port with SO_REUSEPORT (0: one per core).",
                                       minimum=0, maximum=64)
    udp_rcvbuf_bytes: int = setting(4 * 1024 * 1024, "SO_RCVBUF asked for the collector's socket.", minimum=65536)
    max_datagram_bytes: int = setting(16384, "Larger datagrams are rejected as 'oversized'.", minimum=256, maximum=65507)
    max_clock_skew_s: float = setting(3600.0, "Messages whose ts is further than this in the future are rejected.", minimum=0)
    signing: str = setting("off", "Datagram HMAC signatures: off (ignored), optional (checked when present) or required.",
                           choices=("off", "optional", "required"))
    signing_keys_file: str = setting("", "Signing keys (YAML: key id -> shared secret), one key per sender or group of senders.")
    signing_window_s: float = setting(300.0, "A signed datagram whose ts is further than this from now is a replay: rejected.",
                                      minimum=1)
    rate_limit_per_source: float = setting(0.0, "Datagrams per second one source address may send (0: no limit); excess is dropped.",
                                           minimum=0)
    rate_limit_burst: int = setting(1000, "Datagrams a source may send at once above its rate (token bucket size).", minimum=1)
    segment_max_seconds: float = setting(0.5, "A landing segment is published after this many seconds.", minimum=0.05, maximum=60)
    segment_max_bytes: int = setting(8 * 1024 * 1024, "A landing segment is closed and published at this size.", minimum=1024)
    stats_interval_s: float = setting(1.0, "How often processes write their counters to <data_dir>/state.", minimum=0.1)
    window_s: int = setting(60, "Base window of the views, in seconds (divides 3600).", minimum=1, maximum=3600)
    batch_interval_s: float = setting(300.0, "How often the scheduler runs a batch build.", minimum=1)
    batch_lateness_s: float = setting(300.0, "An hour is closed (built by batch) this long after its end.", minimum=0)
    batch_hours_per_job: int = setting(24, "Raw hours processed by one Spark job of a build (progress granularity).", minimum=1)
    spark_master: str = setting("local[*]", "Spark master URL for batch and speed jobs.")
    spark_shuffle_partitions: int = setting(4, "spark.sql.shuffle.partitions: small values suit small machines.", minimum=1)
    spark_driver_memory: str = setting("1g", "spark.driver.memory for batch and speed jobs.")
    speed_trigger_s: float = setting(0.5, "Processing-time trigger of the streaming job, seconds.", minimum=0.1)
    hdfs_host: str = setting("127.0.0.1", "Address the local HDFS (healthmon hdfs up) binds and is reached at.")
    hdfs_rpc_port: int = setting(8020, "NameNode RPC port (hdfs://host:port).", minimum=1, maximum=65535)
    hdfs_http_port: int = setting(9870, "NameNode HTTP port, which serves WebHDFS.", minimum=1, maximum=65535)
    hdfs_datanode_port: int = setting(9866, "DataNode data transfer port.", minimum=1, maximum=65535)
    hdfs_datanode_http_port: int = setting(9864, "DataNode HTTP port (WebHDFS redirects reads and writes here).", minimum=1, maximum=65535)
    hdfs_datanode_ipc_port: int = setting(9867, "DataNode IPC port.", minimum=1, maximum=65535)
    hdfs_heap: str = setting("512m", "Java heap of each HDFS daemon (-Xmx).")
    webhdfs_url: str = setting("", "WebHDFS base URL for an hdfs:// landing store. Empty: http://<landing host>:<hdfs_http_port>.")
    hdfs_user: str = setting("healthmon", "User name given to WebHDFS (simple authentication).")
    retention_raw_days: float = setting(30.0, "Raw landed hours older than this many days are deleted.", minimum=0.01)
    retention_master_days: float = setting(400.0, "Master (Parquet) hours older than this many days are deleted.", minimum=0.01)
    retention_interval_s: float = setting(3600.0, "How often the scheduler runs retention.", minimum=1)
    retention_window_days: float = setting(14.0, "Batch-view minute windows older than this many days are deleted (hour/day rollups stay).",
                                           minimum=0.01)
    retention_hour_days: float = setting(180.0, "Batch-view hour rollups older than this many days are deleted (day rollups stay).",
                                         minimum=0.01)
    retention_day_days: float = setting(3650.0, "Batch-view day rollups older than this many days are deleted.", minimum=0.01)
    liveness_history_s: float = setting(3600.0, "Liveness: the trailing period from which each source's message interval is learnt.",
                                        minimum=60)
    liveness_stale_factor: float = setting(3.0, "Liveness: silent for this many of its own intervals is 'stale'.", minimum=1)
    liveness_stale_min_s: float = setting(15.0, "Liveness: never 'stale' before this many seconds of silence (covers pipeline delay).",
                                          minimum=0)
    liveness_missing_s: float = setting(300.0, "Liveness: silent for longer than this many seconds is 'missing'.", minimum=1)
    alert_rules_file: str = setting("", "Alert rules (YAML). Empty: the bundled healthmon/alert_rules.yaml.")
    alert_eval_interval_s: float = setting(15.0, "How often the scheduler evaluates the alert rules.", minimum=0.1)
    alert_webhook_timeout_s: float = setting(5.0, "Timeout of one webhook delivery attempt, seconds.", minimum=0.1)
    alert_webhook_retries: int = setting(5, "Retries of a failed webhook delivery (exponential backoff).", minimum=0, maximum=20)
    alert_webhook_backoff_s: float = setting(0.5, "First backoff between webhook retries, seconds (doubles each retry).", minimum=0)
    alert_history_days: float = setting(30.0, "Resolved alerts and their transitions are kept this many days.", minimum=0.01)
    disk_recent_s: float = setting(900.0, "Drive health: the recent period whose p99 is judged, seconds.", minimum=60)
    disk_baseline_s: float = setting(86400.0, "Drive health: the trailing period before it that is the device's own baseline.", minimum=60)
    disk_warn_ratio: float = setting(1.5, "Drive health: p99 this many times its baseline or the fleet median is 'warn'.", minimum=1)
    disk_degraded_ratio: float = setting(3.0, "Drive health: p99 this many times baseline or fleet median is 'degraded'.", minimum=1)
    api_host: str = setting("127.0.0.1", "Address the HTTP API listens on.")
    api_port: int = setting(5555, "Port of the HTTP API.", minimum=0, maximum=65535)
    api_threads: int = setting(8, "Worker threads of the HTTP server.", minimum=1, maximum=256)
    api_processes: int = setting(1, "HTTP server processes sharing the API's socket, each with api_threads threads (0: one per core).",
                                 minimum=0, maximum=64)
    api_default_range_s: int = setting(3600, "Range of a query that gives no 'from'.", minimum=60)
    api_max_points: int = setting(5000, "Most points one series answer may hold.", minimum=10)
    api_max_range_days: float = setting(3660.0, "Longest range (to - from) one query may ask for, days.", minimum=1)
    dashboard_refresh_s: float = setting(5.0, "How often the dashboard refreshes itself, seconds.", minimum=0.5)
    web_modules_dir: str = setting("", "The npm packages the API serves (uPlot, Swagger UI). Empty: node_modules of the project.")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            _check(f, getattr(self, f.name))
        if 3600 % self.window_s:
            raise ConfigError(f"window_s={self.window_s}: must divide 3600 so windows align with hours")
        for name in ("udp_host", "api_host", "hdfs_host"):
            try:
                ipaddress.ip_address(getattr(self, name))
            except ValueError:
                raise ConfigError(f"{name}={getattr(self, name)!r}: not an IP address") from None
        if self.disk_degraded_ratio < self.disk_warn_ratio:
            raise ConfigError(f"disk_degraded_ratio={self.disk_degraded_ratio}: must be >= disk_warn_ratio={self.disk_warn_ratio}")
        if not self.retention_window_days <= self.retention_hour_days <= self.retention_day_days:
            raise ConfigError(
                f"retention_window_days={self.retention_window_days}, retention_hour_days={self.retention_hour_days}, "
                f"retention_day_days={self.retention_day_days}: each tier must be kept at least as long as the finer one"
            )
        # Drive health and liveness read minute windows directly: retention must keep every window they read.
        window_needs_s = max(self.disk_recent_s + self.disk_baseline_s, self.liveness_history_s) + self.batch_lateness_s + 3600
        if self.retention_window_days * 86400 < window_needs_s:
            raise ConfigError(
                f"retention_window_days={self.retention_window_days}: must keep at least {window_needs_s / 86400:.3f} days "
                "of minute windows (disk_recent_s + disk_baseline_s, or liveness_history_s, + batch_lateness_s + 1 h)"
            )
        if self.liveness_missing_s <= self.liveness_stale_min_s:
            raise ConfigError(f"liveness_missing_s={self.liveness_missing_s}: must be > liveness_stale_min_s={self.liveness_stale_min_s}")
        url = self.landing_url
        if not (url.startswith("file://") or url.startswith("hdfs://")):
            raise ConfigError(f"landing={self.landing!r}: must start with file:// or hdfs://")

    # Paths derived from data_dir: one place, so every process agrees.
    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).resolve()

    @property
    def landing_url(self) -> str:
        return self.landing or f"file://{self.data_path / 'landing'}"

    @property
    def webhdfs(self) -> str:
        """WebHDFS base URL of the hdfs:// landing store."""
        if self.webhdfs_url:
            return self.webhdfs_url
        from urllib.parse import urlparse

        return f"http://{urlparse(self.landing_url).hostname or self.hdfs_host}:{self.hdfs_http_port}"

    @property
    def hdfs_landing_url(self) -> str:
        """The landing URL that selects the local HDFS of ``healthmon hdfs up``."""
        return f"hdfs://{self.hdfs_host}:{self.hdfs_rpc_port}/healthmon"

    @property
    def spool_dir(self) -> Path:
        return self.data_path / "spool"

    @property
    def hdfs_dir(self) -> Path:
        return self.data_path / "hdfs"

    @property
    def views_dir(self) -> Path:
        return self.data_path / "views"

    @property
    def state_dir(self) -> Path:
        return self.data_path / "state"

    @property
    def spark_dir(self) -> Path:
        return self.data_path / "spark"

    @property
    def alerts_db(self) -> Path:
        """The alert store (SQLite: one writer, the scheduler; many readers)."""
        return self.data_path / "alerts" / "alerts.sqlite"

    @property
    def web_modules_path(self) -> Path:
        """Where `npm ci` put the front-end packages (package.json): the project's node_modules by default."""
        return Path(self.web_modules_dir) if self.web_modules_dir else Path(__file__).resolve().parents[1] / "node_modules"

    @property
    def alert_rules_path(self) -> Path:
        return Path(self.alert_rules_file) if self.alert_rules_file else Path(__file__).with_name("alert_rules.yaml")


def _check(f: dataclasses.Field, value) -> None:
    meta = f.metadata
    if meta.get("choices") and value not in meta["choices"]:
        raise ConfigError(f"{f.name}={value!r}: must be one of {', '.join(map(str, meta['choices']))}")
    if meta.get("minimum") is not None and value < meta["minimum"]:
        raise ConfigError(f"{f.name}={value!r}: must be >= {meta['minimum']}")
    if meta.get("maximum") is not None and value > meta["maximum"]:
        raise ConfigError(f"{f.name}={value!r}: must be <= {meta['maximum']}")


def _convert(f: dataclasses.Field, raw) -> object:
    kind = f.type if isinstance(f.type, type) else {"int": int, "float": float, "str": str}[f.type]
    if isinstance(raw, kind) and not isinstance(raw, bool):
        return raw
    try:
        if kind is int:
            return int(str(raw).strip())
        if kind is float:
            return float(str(raw).strip())
        return str(raw)
    except ValueError:
        raise ConfigError(f"{f.name}={raw!r}: not a valid {kind.__name__}") from None


def load_settings(overrides: Mapping[str, object] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from defaults, ``HEALTHMON_*`` variables and ``overrides``, checked."""
    environ = os.environ if environ is None else environ
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    values: dict[str, object] = {}
    for key, raw in environ.items():
        if key.startswith(ENV_PREFIX):
            name = key[len(ENV_PREFIX):].lower()
            if name not in fields:
                raise ConfigError(f"{key}: unknown setting (known: {', '.join(fields)})")
            values[name] = _convert(fields[name], raw)
    for name, raw in (overrides or {}).items():
        if raw is None:
            continue
        if name not in fields:
            raise ConfigError(f"{name}: unknown setting")
        values[name] = _convert(fields[name], raw)
    return Settings(**values)


def settings_table() -> list[tuple[str, str, object, str]]:
    """(setting, environment variable, default, help) for every setting, for docs and --help."""
    return [
        (f.name, ENV_PREFIX + f.name.upper(), f.default, f.metadata["help"])
        for f in dataclasses.fields(Settings)
    ]
