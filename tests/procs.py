"""Helpers that run real healthmon processes for tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable

HEALTHMON = [sys.executable, "-m", "healthmon.cli"]


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port on 127.0.0.1 (TCP or UDP by ``kind``) that was free a moment ago."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


HDFS_PORT_SETTINGS = ("hdfs_rpc_port", "hdfs_http_port", "hdfs_datanode_port", "hdfs_datanode_http_port", "hdfs_datanode_ipc_port")


def free_hdfs_ports() -> dict[str, int]:
    """Five distinct TCP ports on 127.0.0.1 that were free a moment ago, one per HDFS listener setting."""
    ports: list[int] = []
    while len(ports) < len(HDFS_PORT_SETTINGS):
        port = free_port(socket.SOCK_STREAM)
        if port not in ports:
            ports.append(port)
    return dict(zip(HDFS_PORT_SETTINGS, ports, strict=True))


def healthmon_env(extra: dict[str, str]) -> dict[str, str]:
    """This environment without any HEALTHMON_* variable, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHMON_")}
    env.update(extra)
    return env


def start_healthmon(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    """Start ``healthmon <args>`` with exactly the given HEALTHMON_* settings."""
    log_dir = os.path.join(env.get("HEALTHMON_DATA_DIR", "."), "logs")
    os.makedirs(log_dir, exist_ok=True)
    log = open(os.path.join(log_dir, f"{args[0]}.log"), "ab")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen([*HEALTHMON, *args], env=healthmon_env(env), stdout=log, stderr=subprocess.STDOUT)
    proc.log_path = log.name
    return proc


def run_healthmon(args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """Run ``healthmon <args>`` to completion; fail with its output if it fails."""
    done = subprocess.run([*HEALTHMON, *args], env=healthmon_env(env), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"healthmon {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


def stop_process(proc: subprocess.Popen, timeout: float = 30) -> int:
    """SIGTERM, wait, and return the exit code (SIGKILL if it does not stop in time)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def wait_until(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.2) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except Exception as exc:  # the condition may fail while a process starts
            last_error = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for: {what} (last error: {last_error})")
