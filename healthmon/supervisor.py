"""``healthmon up``: every part of the pipeline on one machine, supervised by honcho.

Each part runs as its own process (``healthmon collect | speed | schedule |
serve | agent`` — the agent reports this machine's own health and disk
latency — and, with ``--mock``, ``healthmon mock`` with steady mock services
plus one service per mock scenario and six mock drives, the last of them
degrading, on a scenario clock three times faster than real time), with the settings of this
command passed down as ``HEALTHMON_*`` variables.  Output is multiplexed with
a prefix per process.  When one part exits, or on Ctrl-C/SIGTERM, honcho sends
SIGTERM to every part (each closes and publishes what it holds) and kills what
is still running after ``STOP_GRACE_S``.

When the landing store is the local HDFS (``landing`` on ``hdfs://<hdfs_host>:
<hdfs_rpc_port>``), ``up`` starts it first if it is not running
(``healthmon hdfs up``) and stops it again at the end.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import sys
import threading
import time

import honcho.manager
import requests

from healthmon.config import ENV_PREFIX, Settings

STOP_GRACE_S = 20  # Spark jobs need a few seconds to stop cleanly


def settings_env(settings: Settings) -> dict[str, str]:
    """``HEALTHMON_*`` variables that reproduce ``settings`` in a child process."""
    return {ENV_PREFIX + f.name.upper(): str(getattr(settings, f.name)) for f in dataclasses.fields(settings)}


def process_commands(mock: bool, mock_services: int) -> dict[str, list[str]]:
    """The command line of each part, by name, in start order."""
    base = [sys.executable, "-m", "healthmon.cli"]
    commands = {
        "collector": [*base, "collect"],
        "speed": [*base, "speed"],
        "scheduler": [*base, "schedule"],
        "api": [*base, "serve"],
        "agent": [*base, "agent"],
    }
    if mock:
        from mock_services.scenarios import SCENARIOS

        # `mock_services` steady services, then one service per other scenario, and six drives (the last degrades);
        # scenario clocks x3, so every alert of the bundled rules goes pending, fires and resolves within ~15 minutes.
        others = [name for name in SCENARIOS if name != "steady"]
        services = mock_services + sum(1 for name in others if SCENARIOS[name] is not None)
        commands["mock"] = [*base, "mock", "--services", str(services), "--rate", "1", "--drives", "6",
                            "--scenario", ",".join(["steady"] * mock_services + others), "--time-scale", "3"]
    return commands


def _announce_when_ready(url: str, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            if requests.get(f"{url}/healthz", timeout=1).ok:
                print(f"\n  healthmon is up: dashboard at {url}/  (API docs at {url}/docs)\n", flush=True)
                return
        except requests.RequestException:
            pass
        stop.wait(0.5)


def _start_local_hdfs(settings: Settings) -> bool:
    """Start the local HDFS when the landing store is on it and it is not running; True if started here."""
    if not settings.landing_url.startswith(settings.hdfs_landing_url.rsplit("/", 1)[0] + "/"):
        return False
    from healthmon import hdfs_cluster

    if hdfs_cluster.status(settings).up:
        return False
    print(f"healthmon: starting the local HDFS ({settings.hdfs_landing_url})", flush=True)
    hdfs_cluster.up(settings)
    return True


def run(settings: Settings, mock: bool = False, mock_services: int = 5) -> int:
    if mock and settings.batch_interval_s == 300.0:
        settings = dataclasses.replace(settings, batch_interval_s=60.0)
    settings.data_path.mkdir(parents=True, exist_ok=True)
    started_hdfs = _start_local_hdfs(settings)
    env = settings_env(settings)
    honcho.manager.KILL_WAIT = STOP_GRACE_S
    manager = honcho.manager.Manager()
    for name, argv in process_commands(mock, mock_services).items():
        manager.add_process(name, "exec " + shlex.join(argv), env={**os.environ, **env})
    url = f"http://{settings.api_host}:{settings.api_port}"
    print(f"healthmon: starting {', '.join(process_commands(mock, mock_services))}; data in {settings.data_path}", flush=True)
    stop = threading.Event()
    threading.Thread(target=_announce_when_ready, args=(url, stop), daemon=True).start()
    started = time.time()
    try:
        manager.loop()
    finally:
        stop.set()
        if started_hdfs:
            from healthmon import hdfs_cluster

            print("healthmon: stopping the local HDFS", flush=True)
            hdfs_cluster.down(settings)
    print(f"healthmon: stopped after {time.time() - started:.0f} s", flush=True)
    # honcho answers SIGTERM/SIGINT with 143/130 even when every part stopped cleanly; a stop that was asked for and
    # went well is a success, as it is for each part run alone (and for a service manager such as systemd).
    if manager.returncode in (130, 143) and all(p.get("returncode") == 0 for p in manager._processes.values()):
        return 0
    return manager.returncode or 0

