"""Settings: defaults, environment overrides, and bad values that stop a process at start."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from healthmon.config import ConfigError, Settings, load_settings, settings_table

README = Path(__file__).resolve().parents[1] / "README.md"


def test_defaults_match_the_design():
    s = load_settings(environ={})
    assert (s.udp_host, s.udp_port, s.api_host, s.api_port, s.window_s) == ("127.0.0.1", 3500, "127.0.0.1", 5555, 60)
    assert s.landing_url == f"file://{Path('./var').resolve() / 'landing'}"


def test_environment_and_overrides_convert_types():
    s = load_settings({"api_port": "6000"}, environ={"HEALTHMON_UDP_PORT": "4000", "HEALTHMON_SEGMENT_MAX_SECONDS": "0.5"})
    assert (s.udp_port, s.api_port, s.segment_max_seconds) == (4000, 6000, 0.5)


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"HEALTHMON_UDP_PORT": "abc"}, "udp_port"),
        ({"HEALTHMON_UDP_PORT": "70000"}, "udp_port"),
        ({"HEALTHMON_WINDOW_S": "7"}, "window_s"),
        ({"HEALTHMON_API_HOST": "localhost:80"}, "api_host"),
        ({"HEALTHMON_LANDING": "s3://bucket"}, "landing"),
        ({"HEALTHMON_SEGMENT_MAX_SECONDS": "0"}, "segment_max_seconds"),
        ({"HEALTHMON_NO_SUCH_THING": "1"}, "HEALTHMON_NO_SUCH_THING"),
        ({"HEALTHMON_RETENTION_HOUR_DAYS": "7"}, "retention_hour_days=7.0"),  # shorter than the minute tier
        ({"HEALTHMON_RETENTION_WINDOW_DAYS": "0.5"}, "retention_window_days=0.5: must keep at least 1.056 days"),
        ({"HEALTHMON_LIVENESS_MISSING_S": "10"}, "liveness_missing_s"),
    ],
)
def test_bad_values_name_the_setting(environ, named):
    with pytest.raises(ConfigError, match=named):
        load_settings(environ=environ)


def test_a_bad_setting_stops_the_command_at_start():
    done = subprocess.run(
        [sys.executable, "-m", "healthmon.cli", "serve"],
        env={"HEALTHMON_API_PORT": "not-a-port", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "api_port" in done.stderr and "not-a-port" in done.stderr


def test_every_setting_is_documented_in_the_readme():
    text = README.read_text()
    for name, env, _default, _help in settings_table():
        assert f"`{name}`" in text and env in text, name
    assert len(settings_table()) == len(Settings.__dataclass_fields__)


def test_every_rejection_reason_is_documented_in_the_readme():
    from healthmon.schema import REASONS

    text = README.read_text()
    assert [reason for reason in REASONS if f"| `{reason}` |" not in text] == []
