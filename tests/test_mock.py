"""``healthmon mock``: real datagrams over UDP, valid, deterministic for a seed."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from healthmon.schema import parse_message
from tests.procs import healthmon_env


def receive_mock(args: list[str], expected: int) -> list[dict]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(10)
        port = sock.getsockname()[1]
        proc = subprocess.Popen(
            [sys.executable, "-m", "healthmon.cli", "mock", "--target", f"127.0.0.1:{port}", *args], env=healthmon_env({})
        )
        messages = [parse_message(sock.recv(65535), time.time()) for _ in range(expected)]
        assert proc.wait(30) == 0
    return messages


@pytest.mark.parametrize("wire_format", ["canonical", "seed003"])
def test_mock_sends_valid_deterministic_messages(wire_format):
    args = ["--services", "3", "--rate", "20", "--duration", "0.5", "--seed", "11", "--format", wire_format]
    first = receive_mock(args, 30)
    second = receive_mock(args, 30)
    assert {m["service"] for m in first} == {"api-gateway", "auth", "billing"}
    values = [{k: v for k, v in m.items() if k != "ts"} for m in first]
    assert values == [{k: v for k, v in m.items() if k != "ts"} for m in second]
    assert all(abs(m["ts"] - time.time()) < 30 for m in first)
    other_seed = receive_mock([*args[:-3], "13", "--format", wire_format], 30)
    assert [m["cpu_pct"] for m in other_seed] != [m["cpu_pct"] for m in first]
