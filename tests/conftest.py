"""Shared fixtures: free ports on 127.0.0.1 and a fresh data directory."""

from __future__ import annotations

import socket

import pytest

from tests.procs import free_port


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
