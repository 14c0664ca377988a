"""Every process stops cleanly on SIGTERM within 10 s (the issue's limit) and publishes what it holds.

``test_every_process_stops_on_sigterm`` runs ``collect``, ``serve``,
``speed``, ``schedule``, ``mock`` and ``agent`` together on one data
directory, each as its own ``healthmon`` process, and stops them one at a
time with SIGTERM, each while it has work in hand:

- ``mock`` and ``agent`` while they send to the collector: they exit 0 and say
  how many datagrams they sent;
- ``collect`` with 60 s segments, so what it accepted lately is in open
  segments: at the stop all of it lands (``landed == accepted``, no hidden
  file left), and it received every datagram ``mock`` and ``agent`` said
  they sent;
- ``speed`` right after new raw files landed, while it streams them: no
  half-written view file is left, and what it committed stays;
- ``schedule`` in the middle of a batch build (its view copy made, Spark
  writing master): the build is cancelled and publishes nothing (or it had
  just finished and published all);
- ``serve`` while clients read: answers in flight go out.

``test_spark_processes_stop_on_sigterm_while_spark_starts``: ``speed`` and
``schedule`` told to stop while their JVM starts (a cold start takes 7-11 s)
give the start up, and the JVM exits too.  ``test_up_stops_on_sigterm``:
``healthmon up --mock`` stops all its parts at once.

The time from SIGTERM to exit is measured for each and must be at most
``STOP_LIMIT_S`` (a functional limit: supervisors such as honcho, systemd or
Docker kill what is still running after their grace period, and a killed
process loses what it held).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import pytest
import requests

from healthmon import schema
from healthmon.config import load_settings
from healthmon.landing import landing_for
from healthmon.state import read_runs, read_state
from healthmon.views import BATCH_VIEW, REALTIME_VIEW
from tests.procs import free_port, healthmon_env, start_healthmon, wait_until
from tests.test_collector import landed_rows, read_counters, valid_messages
from tests.test_crash import _alive, _children, _landed_hour

pytestmark = [pytest.mark.slow, pytest.mark.spark]

STOP_LIMIT_S = 10.0
"""Longest a process may take from SIGTERM to exit (issue 7)."""

HOUR = 3600


def log_of(proc: subprocess.Popen) -> str:
    return Path(proc.log_path).read_text(errors="replace")


def sigterm_and_time(proc: subprocess.Popen) -> tuple[int, float]:
    """SIGTERM ``proc``; its exit code and the seconds until it exited (killed, and a failure, after a minute)."""
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        rc = proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"pid {proc.pid} ignored SIGTERM for 60 s:\n{log_of(proc)[-3000:]}") from None
    return rc, time.monotonic() - started


def hidden_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and p.name.startswith(("_", "."))]


def test_every_process_stops_on_sigterm(tmp_path, subtests):
    udp_port, api_port = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_STREAM)
    env = {"HEALTHMON_DATA_DIR": str(tmp_path), "HEALTHMON_UDP_PORT": str(udp_port), "HEALTHMON_API_PORT": str(api_port),
           "HEALTHMON_STATS_INTERVAL_S": "0.2", "HEALTHMON_BATCH_INTERVAL_S": "5"}
    settings = load_settings(environ=env)
    store = landing_for(settings)
    current = int(time.time() // HOUR) * HOUR
    target = f"127.0.0.1:{udp_port}"
    procs = {"collect": start_healthmon(["collect"], {**env, "HEALTHMON_SEGMENT_MAX_SECONDS": "60"})}
    times: dict[str, float] = {}
    url = f"http://127.0.0.1:{api_port}"
    try:
        wait_until(lambda: (read_counters(tmp_path) or {}).get("state") == "running", 60, "collector running")
        procs.update({  # the senders once the collector listens, so that it receives every datagram they send
            "serve": start_healthmon(["serve"], env),
            "speed": start_healthmon(["speed"], env),
            "schedule": start_healthmon(["schedule"], env),
            "mock": start_healthmon(["mock", "--services", "3", "--rate", "20", "--target", target], env),
            "agent": start_healthmon(["agent", "--interval", "0.5", "--target", target], env),
        })
        wait_until(lambda: requests.get(f"{url}/healthz", timeout=1).ok, 60, "API up")
        wait_until(lambda: "mock: service" in log_of(procs["mock"]), 60, "mock sending")
        wait_until(lambda: "agent: sending every" in log_of(procs["agent"]), 120, "agent sending")

        def stop(name: str) -> None:
            rc, seconds = sigterm_and_time(procs[name])
            times[name] = seconds
            assert rc == 0, log_of(procs[name])[-3000:]
            assert seconds <= STOP_LIMIT_S, f"{name} took {seconds:.1f} s to stop"

        with subtests.test("mock"):
            stop("mock")
            assert "mock: sent" in log_of(procs["mock"])
        with subtests.test("agent"):
            stop("agent")
            assert "agent: stopped; sent" in log_of(procs["agent"])

        # The collector holds everything it accepted in open segments (60 s): SIGTERM publishes them.
        markers = valid_messages(time.time(), 50)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for m in markers:
                sock.sendto(schema.encode(m), ("127.0.0.1", udp_port))
        sent_by_mock = int(log_of(procs["mock"]).split("mock: sent ")[1].split()[0])
        sent_by_agent = int(log_of(procs["agent"]).split("agent: stopped; sent ")[1].split()[0])
        wait_until(lambda: read_counters(tmp_path)["received"] >= sent_by_mock + sent_by_agent + len(markers), 30,
                   "the collector received every datagram")
        held = read_counters(tmp_path)
        assert held["open_segments"] > 0
        held_messages = held["accepted"] - held["landed_messages"]
        with subtests.test("collect"):
            stop("collect")
            counters = read_counters(tmp_path)
            assert counters["state"] == "stopped"
            assert counters["received"] == sent_by_mock + sent_by_agent + len(markers)
            assert counters["landed_messages"] == counters["accepted"] > 0
            assert counters["deadletter_messages"] == counters["rejected"]
            assert counters["open_segments"] == counters["pending_segments"] == 0
            services = {row.get("service") for _, row in landed_rows(tmp_path)}
            assert {m["service"] for m in markers} <= services
            assert not hidden_files(tmp_path / "landing")

        # The scheduler, in the middle of a build: its copy of the view is made and Spark writes master.  Its builds so
        # far had nothing to do; now three closed hours land, and the next build (every 5 s) compacts them.
        wait_until(lambda: read_runs(settings.state_dir), 300, "the scheduler's first build")
        for k in range(3):
            _landed_hour(store, current - (4 - k) * HOUR, f"c0-1-{k:06d}", 2000, seed=k)
        view = settings.views_dir / BATCH_VIEW
        master = tmp_path / "landing" / "master" / "type=health"

        def mid_build() -> bool:
            assert procs["schedule"].poll() is None, log_of(procs["schedule"])[-3000:]
            return bool(list(view.parent.glob(f".{BATCH_VIEW}.*.tmp"))) and master.is_dir() and any(
                p.name.startswith(".spark-staging") for p in master.iterdir())

        wait_until(mid_build, 300, "a build of the scheduler, mid-way", interval=0.01)
        with subtests.test("schedule"):
            stop("schedule")
            assert not list(view.parent.glob(f".{BATCH_VIEW}.*.tmp"))  # nothing half-built left
            # The build was cancelled (it published nothing; the next start builds again), or it had just finished.
            last = read_runs(settings.state_dir)[0]
            assert last["status"] == "error" or last["hours_rebuilt"] == 3, last
            con = duckdb.connect(str(view), read_only=True)
            try:
                built = con.execute("SELECT count(*) FROM view_inputs WHERE msg_type = 'health' AND hour_start IN (?, ?, ?)",
                                    [current - (4 - k) * HOUR for k in range(3)]).fetchone()[0]
            finally:
                con.close()
            assert built == (3 if last["status"] == "ok" else 0)

        # The speed job, while it streams files that just landed.
        wait_until(lambda: (read_state(settings.state_dir, "speed") or {}).get("state") == "streaming", 300, "speed job streaming")
        for k in range(3):
            _landed_hour(store, current, f"c0-2-{k:06d}", 200, seed=10 + k)
        wait_until(lambda: (read_state(settings.state_dir, "speed") or {}).get("input_rows", 0) > 0, 120, "a first micro-batch")
        with subtests.test("speed"):
            stop("speed")
            assert not list(settings.views_dir.glob(f".{REALTIME_VIEW}.*.tmp"))
            assert (settings.views_dir / REALTIME_VIEW).exists()
            assert "stopping after the current micro-batch" in log_of(procs["speed"])

        # The API, while clients read.
        readers_stop, failures, answered = threading.Event(), [], [0]

        def read() -> None:
            session = requests.Session()
            while not readers_stop.is_set():
                try:
                    resp = session.get(f"{url}/api/v1/summary", timeout=10)
                except requests.ConnectionError:
                    return  # no longer accepting: the stop has begun
                if resp.status_code != 200:
                    failures.append(resp.status_code)
                answered[0] += 1

        readers = [threading.Thread(target=read) for _ in range(3)]
        for t in readers:
            t.start()
        wait_until(lambda: answered[0] > 20, 30, "readers reading")
        with subtests.test("serve"):
            stop("serve")
            readers_stop.set()
            for t in readers:
                t.join(15)
            assert failures == []
            assert "API stopped" in log_of(procs["serve"])
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    print("\nSIGTERM -> exit: " + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in times.items())
          + f"; the collector held {held_messages} accepted messages in open segments, all landed at the stop")
    assert len(times) == 6


def test_spark_processes_stop_on_sigterm_while_spark_starts(tmp_path):
    """A cold SparkSession takes 7-11 s, more on a busy machine: SIGTERM while the JVM starts gives the start up, and the
    JVM goes too (no orphan)."""
    procs = {name: start_healthmon([name], {"HEALTHMON_DATA_DIR": str(tmp_path / name), "HEALTHMON_API_PORT": str(free_port())})
             for name in ("speed", "schedule", "batch")}
    times: dict[str, float] = {}
    jvms: list[int] = []
    try:
        for name, proc in procs.items():
            wait_until(lambda proc=proc: _children(proc.pid), 120, f"the JVM of {name} starting", interval=0.05)
        for name, proc in procs.items():
            jvms += _children(proc.pid)
            rc, times[name] = sigterm_and_time(proc)
            assert rc == 0, log_of(proc)[-3000:]
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for proc in procs.values():
        assert "stopped while Spark was starting" in log_of(proc), log_of(proc)[-3000:]
    wait_until(lambda: not any(_alive(pid) for pid in jvms), 60, "the JVMs to exit with their drivers")
    print("\nSIGTERM while Spark starts -> exit: " + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in times.items()))
    assert all(seconds <= STOP_LIMIT_S for seconds in times.values()), times


def test_up_stops_on_sigterm(tmp_path):
    """``healthmon up --mock``: SIGTERM to the ``up`` process alone stops every part, each publishing what it holds."""
    udp_port, api_port = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_STREAM)
    env = healthmon_env({"HEALTHMON_DATA_DIR": str(tmp_path), "HEALTHMON_UDP_PORT": str(udp_port),
                         "HEALTHMON_API_PORT": str(api_port), "HEALTHMON_STATS_INTERVAL_S": "0.2"})
    log = open(tmp_path / "up.log", "w+b")  # noqa: SIM115 - read back below
    proc = subprocess.Popen([sys.executable, "-m", "healthmon.cli", "up", "--mock", "--mock-services", "2"], env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    api = f"http://127.0.0.1:{api_port}"
    try:
        wait_until(lambda: requests.get(f"{api}/api/v1/summary", timeout=2).json()["services"], 180, "mock services in the API")
        wait_until(lambda: (read_state(tmp_path / "state", "speed") or {}).get("input_rows", 0) > 0, 120, "the speed job streaming")
        wait_until(lambda: read_runs(tmp_path / "state"), 120, "a batch build")
        before = read_counters(tmp_path)
        rc, seconds = sigterm_and_time(proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    log.seek(0)
    output = log.read().decode(errors="replace")
    print(f"\nup: SIGTERM -> exit {seconds:.2f} s")
    assert rc == 0, output[-3000:]
    assert seconds <= STOP_LIMIT_S, f"up took {seconds:.1f} s to stop"
    for part in ("collector", "speed", "scheduler", "api", "agent", "mock"):
        assert f"{part} stopped (rc=0)" in output, output[-3000:]
    counters = read_counters(tmp_path)
    assert counters["state"] == "stopped" and counters["received"] >= before["received"]
    assert counters["landed_messages"] == counters["accepted"] and counters["open_segments"] == counters["pending_segments"] == 0
    assert not hidden_files(tmp_path / "landing")
    assert not list((tmp_path / "views").glob(".*.tmp"))
