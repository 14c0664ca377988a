"""Shared fixtures: free ports on 127.0.0.1 and a fresh data directory."""

from __future__ import annotations

import socket

import pytest

from healthmon.config import load_settings
from tests.procs import HDFS_PORT_SETTINGS, free_hdfs_ports, free_port


@pytest.fixture
def free_udp_port() -> int:
    """A UDP port on 127.0.0.1 that was free a moment ago."""
    return free_port(socket.SOCK_DGRAM)


@pytest.fixture
def free_tcp_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    return free_port(socket.SOCK_STREAM)


@pytest.fixture
def data_dir(tmp_path):
    """A fresh HEALTHMON_DATA_DIR for one test."""
    return tmp_path


@pytest.fixture(scope="session")
def local_hdfs(tmp_path_factory):
    """A real single-node HDFS (``healthmon hdfs up``) on free ports, shared by the HDFS tests.

    Yields the cluster's settings (its landing URL is on this HDFS) and the
    ``HEALTHMON_*`` variables that point a healthmon process at it.
    """
    import dataclasses

    from healthmon import hdfs_cluster

    settings = load_settings({"data_dir": str(tmp_path_factory.mktemp("hdfs")), **free_hdfs_ports()}, environ={})
    settings = dataclasses.replace(settings, landing=settings.hdfs_landing_url)
    hdfs_cluster.up(settings)
    env = {f"HEALTHMON_{name.upper()}": str(getattr(settings, name)) for name in HDFS_PORT_SETTINGS}
    env.update({"HEALTHMON_LANDING": settings.landing_url, "HEALTHMON_WEBHDFS_URL": settings.webhdfs})
    try:
        yield settings, env
    finally:
        hdfs_cluster.down(settings)
