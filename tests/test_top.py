"""``healthmon top`` against a real ``healthmon serve`` over real view files.

Views hold three services around the real clock (the server's own): one
sending every 5 s until a moment ago (up), one silent for 200 s (stale: the
stale floor is set to 120 s), one silent for 5000 s (missing, and past the
liveness history, so no current values), and one drive host sending
latency.  ``top --once`` must show each with its status and its last values;
the live mode runs in a real pseudo-terminal, keeps going while the API is
down, shows the data once it is up, and exits 0 on SIGTERM and on Ctrl-C.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import termios
import time
from pathlib import Path

import pytest

from healthmon.config import load_settings
from healthmon.schema import disk_latency_message
from healthmon.sketch import LatencySketch
from healthmon.top import duration
from serving.params import iso
from tests.procs import HEALTHMON, free_port, healthmon_env, stop_process, wait_until
from tests.test_merge_rule import message
from tests.test_report import publish_views
from tests.test_serving import start_server

LAST = {  # service -> (silent for, last cpu, ram, disk)
    "alpha": (1.0, 12.5, 34.0, 56.0),
    "beta": (200.0, 77.5, 20.5, 90.0),
    "gamma": (5000.0, 1.0, 2.0, 3.0),
}
EXPECTED_STATUS = {"alpha": "up", "beta": "stale", "gamma": "missing"}


def _messages(now: float) -> list[dict]:
    """120 health messages per service, 5 s apart, the last one ``silent`` s before ``now`` with its known values."""
    out = []
    for service, (silent, cpu, ram, disk) in LAST.items():
        last = now - silent
        out += [message(service, last - 5 * i, 50.0, 50.0, 50.0) for i in range(1, 120)]
        out.append(message(service, last, cpu, ram, disk))
    return out


def _drive_messages(now: float) -> list[dict]:
    sketch = LatencySketch()
    sketch.add(120.0, 10)
    return [disk_latency_message("host-a", "nvme0n1", "read", now - 1 - 5 * i, 5.0, sketch, source="mock") for i in range(100)]


MESSAGE_COUNT = 120


def _serve(data_dir: Path, port: int):
    return start_server(data_dir, port, {"HEALTHMON_LIVENESS_STALE_MIN_S": "120"})


@pytest.fixture(scope="module")
def views(tmp_path_factory) -> tuple[Path, int]:
    """The data directory and the batch horizon; the views are built around the clock of now (the server's clock)."""
    now = time.time()
    horizon = int((now - 4000) // 3600 * 3600)
    data_dir = tmp_path_factory.mktemp("top")
    settings = load_settings({"data_dir": str(data_dir)}, environ={})
    publish_views(settings.views_dir, _messages(now), _drive_messages(now), horizon, horizon)
    return data_dir, horizon


@pytest.fixture(scope="module")
def api(views):
    proc, url = _serve(views[0], free_port())
    yield url
    assert stop_process(proc, timeout=10) == 0, Path(proc.log_path).read_text()


def top(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*HEALTHMON, "top", *args], env=healthmon_env(env or {}), capture_output=True, text=True, timeout=60)


def row_of(output: str, service: str) -> list[str]:
    lines = [line.split() for line in output.splitlines() if line.split()[:1] == [service]]
    assert len(lines) == 1, output
    return lines[0]


def silent_s(text: str) -> int:
    """Seconds of a "silent for" cell such as ``3m25s`` or ``1h23m``."""
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)([dhms])", text))


def test_once_shows_every_service_with_status_and_current_values(api, views):
    done = top(["--once", "--url", api])
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "Traceback" not in out + done.stderr
    assert "\x1b[" not in out  # plain text when not on a terminal
    for service, (_, cpu, ram, disk) in LAST.items():
        row = row_of(out, service)
        assert row[1] == EXPECTED_STATUS[service], row
        if service == "gamma":  # silent for longer than the liveness history: no current values
            assert row[3:] == ["–", "–", "–", f"{MESSAGE_COUNT:,}"], row
        else:
            assert row[3:] == [f"{cpu:.1f}", f"{ram:.1f}", f"{disk:.1f}", f"{MESSAGE_COUNT:,}"], row
        # The server's clock has run on since the views were built, by the time this module has taken so far.
        silent = silent_s(row[2])
        assert -60 < silent - LAST[service][0] < 60, row  # "1h23m" shows minutes only
    header = out[: out.index("\nservice ")]
    assert f"healthmon top  {api}  polled " in header
    assert "services 3 (1 up, 1 stale, 1 missing)" in header
    assert "hosts 1 (1 up)" in header
    assert re.search(r"alerts (n/a|\d+ active \(\d+ firing\))", header)
    assert f"horizon {iso(views[1])}" in header


def test_once_with_the_api_down_names_the_error(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    done = top(["--once", "--url", url])
    assert done.returncode == 1
    assert f"API error: cannot connect to {url}: Connection refused\n" in done.stdout
    assert "services –   hosts –\nalerts –   horizon –\n" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr


def test_once_against_something_that_is_not_the_api(api):
    done = top(["--once", "--url", f"{api}/elsewhere"])
    assert done.returncode == 1
    assert f"(is {api}/elsewhere a healthmon API?)" in " ".join(done.stdout.split())  # the line may wrap
    assert "Traceback" not in done.stdout + done.stderr


def test_default_url_comes_from_the_settings(api):
    port = api.rsplit(":", 1)[1]
    done = top(["--once"], {"HEALTHMON_API_PORT": port})
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"healthmon top  http://127.0.0.1:{port}  polled" in done.stdout


def test_iterations_end_the_live_view(api):
    done = top(["--url", api, "--interval", "0.1", "--iterations", "3"])
    assert done.returncode == 0, done.stderr
    assert "alpha" in done.stdout and "missing" in done.stdout  # the last frame stays on screen


@pytest.mark.parametrize("args", [["--interval", "0"], ["--interval", "-1"], ["--interval", "x"], ["--iterations", "0"]])
def test_bad_flags_exit_2(args):
    done = top(args)
    assert done.returncode == 2 and "error: argument --" in done.stderr


def test_duration():
    assert [duration(s) for s in (None, 0, 59.9, 60, 185, 3600, 7620, 86400 * 3 + 4 * 3600 + 5)] == [
        "–", "0s", "59s", "1m00s", "3m05s", "1h00m", "2h07m", "3d04h"]


# ---------------------------------------------------------------- the live view in a real terminal


class Terminal:
    """``healthmon top`` on a pseudo-terminal of 40 x 160; ``screen`` is everything it wrote (ANSI codes removed)."""

    def __init__(self, args: list[str]) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
        env = healthmon_env({"TERM": "xterm-256color"})
        env.pop("COLUMNS", None), env.pop("LINES", None), env.pop("NO_COLOR", None)
        self.proc = subprocess.Popen([*HEALTHMON, "top", *args], stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
        os.close(slave)
        self.master = master
        self.raw = b""

    @property
    def screen(self) -> str:
        return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", self.raw.decode(errors="replace"))

    def read(self) -> None:
        while select.select([self.master], [], [], 0.05)[0]:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:  # the other side closed
                return
            if not chunk:
                return
            self.raw += chunk

    def wait_for(self, condition, what: str) -> None:
        def seen() -> bool:
            self.read()
            assert self.proc.poll() is None, self.screen
            return condition(self.screen)

        wait_until(seen, 30, what, interval=0.05)

    def stop(self, signum: int) -> int:
        self.proc.send_signal(signum)
        rc = self.proc.wait(10)
        self.read()
        os.close(self.master)
        return rc


@pytest.mark.slow
def test_live_view_survives_the_api_being_down_and_stops_on_sigterm(views):
    port = free_port()
    term = Terminal(["--url", f"http://127.0.0.1:{port}", "--interval", "0.2"])
    proc = None
    try:
        term.wait_for(lambda s: s.count("Connection refused; retrying") >= 3, "three failed polls shown")
        assert "Traceback" not in term.screen
        proc, _ = _serve(views[0], port)
        term.wait_for(lambda s: "alpha" in s and "stale" in s, "the services once the API is up")
        assert term.stop(signal.SIGTERM) == 0
    finally:
        if term.proc.poll() is None:
            term.proc.kill()
        if proc is not None:
            stop_process(proc)
    assert "Traceback" not in term.screen
    assert "\x1b[" in term.raw.decode(errors="replace")  # a terminal gets colours and redraws


def test_live_view_refreshes_and_stops_on_ctrl_c(api):
    term = Terminal(["--url", api, "--interval", "0.2"])
    try:
        term.wait_for(lambda s: s.count("polled") >= 3, "three frames")
        assert term.stop(signal.SIGINT) == 0
    finally:
        if term.proc.poll() is None:
            term.proc.kill()
    assert "Traceback" not in term.screen and "missing" in term.screen
