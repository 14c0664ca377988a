"""Ingest benchmark: how many health datagrams per second the collector keeps up with.

    python bench/ingest.py [--rates 20000,50000,100000,200000] [--seconds 3]

For each target rate, a sender process blasts pre-encoded ~215-byte health
datagrams over loopback at that rate for a few seconds, against

1. a bare receiver process that only calls ``recv()`` in a loop and counts
   (the ceiling of one Python process on this machine), and
2. the real collector (``healthmon collect`` in a subprocess, temp data dir,
   default settings: 4 MiB SO_RCVBUF, 0.5 s segments).

Each receiver is started fresh for every rate.  After the sender stops the
receiver gets time to drain its socket, then SIGTERM; the collector's final
counters (written after it published everything) give received, accepted and
landed.  Printed per rate: sent msg/s, received (bare) and accepted
(collector) msg/s over the send window, loss %, and the ratio collector/bare.
Results go to ``bench/results/ingest.json``.

Sender and receiver share the machine (2 cores here): the figures are what one
sender process and one receiver process reach together, not a NIC's limit.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "ingest.json"
DEFAULT_RATES = (20_000, 50_000, 100_000, 200_000)
RCVBUF = 4 * 1024 * 1024


# ---------------------------------------------------------------- roles run in child processes


def make_datagrams(count: int = 1000) -> list[bytes]:
    """``count`` distinct, valid, pre-encoded health datagrams of ~215 bytes."""
    sys.path.insert(0, str(REPO))
    from healthmon import schema

    now = time.time()
    out = []
    for i in range(count):
        msg = {
            "service": f"checkout-svc-{i % 200:03d}",
            "host": f"host-{i % 20:02d}",
            "ts": round(now - (i % 50) * 0.01, 6),
            "cpu_pct": round((i * 7.3) % 100, 2),
            "ram_total_gb": 32.0,
            "ram_free_gb": 4.25 + (i % 25),
            "disk_total_gb": 512.0,
            "disk_free_gb": 100.5 + (i % 300),
            "net": {"eth0": {"rx_bps": 1000 + i, "tx_bps": 2000 + i}},
        }
        out.append(schema.encode(msg))
    return out


def role_send(port: int, rate: int, seconds: float) -> None:
    """Send at ``rate`` datagrams/s for ``seconds``; print {"sent", "seconds", "errors"} as JSON."""
    datagrams = make_datagrams()
    n_dgrams = len(datagrams)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, RCVBUF)
    sock.connect(("127.0.0.1", port))
    send = sock.send
    clock = time.perf_counter
    sent = errors = 0
    start = clock()
    end = start + seconds
    chunk = max(1, rate // 2000)  # check the clock every ~0.5 ms of sending
    while True:
        now = clock()
        if now >= end:
            break
        target = int((now - start) * rate)
        if sent >= target:
            time.sleep(min(0.0005, end - now))
            continue
        for _ in range(min(chunk, target - sent)):
            try:
                send(datagrams[sent % n_dgrams])
            except OSError:
                errors += 1
            sent += 1
    print(json.dumps({"sent": sent, "seconds": clock() - start, "errors": errors,
                      "bytes_avg": sum(map(len, datagrams)) / n_dgrams}), flush=True)


class _Stop(Exception):
    pass


def _raise_stop(_signum, _frame):
    raise _Stop


def role_bare(port: int) -> None:
    """recv() in a loop and count; print {"received"} at SIGTERM."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
    sock.bind(("127.0.0.1", port))
    recv = sock.recv
    received = 0
    signal.signal(signal.SIGTERM, _raise_stop)
    print("ready", flush=True)
    try:
        while True:
            recv(65535)
            received += 1
    except _Stop:
        pass
    print(json.dumps({"received": received}), flush=True)


# ---------------------------------------------------------------- the orchestrator


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_sender(port: int, rate: int, seconds: float, progress) -> dict:
    proc = subprocess.Popen([sys.executable, __file__, "--role", "send", "--port", str(port), "--rate", str(rate),
                             "--seconds", str(seconds)], stdout=subprocess.PIPE, text=True)
    started = time.monotonic()
    done = 0.0
    while proc.poll() is None:
        time.sleep(0.1)
        step = min(seconds, time.monotonic() - started) - done
        if step > 0:
            progress.update(step)
            done += step
    progress.update(max(0.0, seconds - done))
    out, _ = proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"sender failed ({proc.returncode})")
    return json.loads(out.strip().splitlines()[-1])


def bench_bare(rate: int, seconds: float, progress) -> dict:
    port = free_udp_port()
    proc = subprocess.Popen([sys.executable, __file__, "--role", "bare", "--port", str(port)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    sender = run_sender(port, rate, seconds, progress)
    time.sleep(0.5)  # let it drain what is queued
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=10)
    received = json.loads(out.strip().splitlines()[-1])["received"]
    return _figures(sender, received=received, accepted=received)


def _read_counters(state: Path) -> dict | None:
    try:
        return json.loads(state.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def bench_collector(rate: int, seconds: float, progress) -> dict:
    port = free_udp_port()
    with tempfile.TemporaryDirectory(prefix="healthmon-bench-") as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHMON_")}
        env.update({"HEALTHMON_DATA_DIR": tmp, "HEALTHMON_UDP_PORT": str(port), "HEALTHMON_STATS_INTERVAL_S": "0.2",
                    "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))})
        log = open(Path(tmp) / "collector.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen([sys.executable, "-m", "healthmon.cli", "collect"], env=env, cwd=tmp, stdout=log,
                                stderr=subprocess.STDOUT)
        state = Path(tmp) / "state" / "collector-c1.json"
        deadline = time.monotonic() + 30
        while not ((c := _read_counters(state)) and c.get("state") == "running"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("collector did not start: " + (Path(tmp) / "collector.log").read_text())
            time.sleep(0.05)
        sender = run_sender(port, rate, seconds, progress)
        # let it drain: wait until 'received' stops moving (at most 5 s)
        last, stable_since, deadline = -1, time.monotonic(), time.monotonic() + 5
        while time.monotonic() < deadline:
            received = (_read_counters(state) or {}).get("received", 0)
            if received != last:
                last, stable_since = received, time.monotonic()
            elif time.monotonic() - stable_since > 0.5:
                break
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
        log.close()
        counters = _read_counters(state)
        if code != 0 or counters is None:
            raise RuntimeError(f"collector exited {code}: " + (Path(tmp) / "collector.log").read_text()[-2000:])
        landed = sum(1 for p in (Path(tmp) / "landing" / "raw").rglob("*.jsonl") if not p.name.startswith(("_", "."))
                     for _ in p.open("rb"))
    out = _figures(sender, received=counters["received"], accepted=counters["accepted"])
    out.update(rejected=counters["rejected"], landed_messages=counters["landed_messages"], landed_lines_on_disk=landed,
               landed_segments=counters["landed_segments"])
    return out


def _figures(sender: dict, received: int, accepted: int) -> dict:
    secs = sender["seconds"]
    return {
        "sent": sender["sent"],
        "send_seconds": round(secs, 3),
        "sent_per_s": round(sender["sent"] / secs),
        "received": received,
        "accepted": accepted,
        "accepted_per_s": round(accepted / secs),
        "loss_pct": round(100.0 * (1 - received / sender["sent"]), 2) if sender["sent"] else 0.0,
        "datagram_bytes_avg": round(sender["bytes_avg"], 1),
    }


def _cpu_idle_pct(seconds: float = 1.0) -> float | None:
    """Share of CPU time that was idle over ``seconds`` (from /proc/stat), to spot a busy machine."""

    def sample():
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        return fields[3] + fields[4], sum(fields)  # idle + iowait, total

    try:
        idle0, total0 = sample()
        time.sleep(seconds)
        idle1, total1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return round(100.0 * (idle1 - idle0) / max(1, total1 - total0), 1)


def machine() -> dict:
    info = {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform(),
            "loadavg_at_start": os.getloadavg(), "cpu_idle_pct_before": _cpu_idle_pct()}
    try:
        info["rmem_max"] = int(Path("/proc/sys/net/core/rmem_max").read_text())
    except OSError:
        pass
    return info


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default=",".join(map(str, DEFAULT_RATES)), help="target rates, msg/s, comma-separated")
    parser.add_argument("--seconds", type=float, default=3.0, help="send time per rate and receiver")
    parser.add_argument("--role", choices=["send", "bare"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "send":
        role_send(args.port, args.rate, args.seconds)
        return 0
    if args.role == "bare":
        role_bare(args.port)
        return 0

    from tqdm import tqdm

    rates = [int(r) for r in args.rates.split(",")]
    info = machine()
    rows = []
    with tqdm(total=2 * len(rates) * args.seconds, unit="s", desc="ingest bench", bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s") as bar:
        for rate in rates:
            bar.set_postfix_str(f"{rate // 1000}k/s bare")
            bare = bench_bare(rate, args.seconds, bar)
            bar.set_postfix_str(f"{rate // 1000}k/s collector")
            coll = bench_collector(rate, args.seconds, bar)
            ratio = round(coll["accepted_per_s"] / bare["accepted_per_s"], 3) if bare["accepted_per_s"] else None
            rows.append({"target_per_s": rate, "bare": bare, "collector": coll, "ratio_collector_bare": ratio})

    print()
    if (info["cpu_idle_pct_before"] or 100) < 90:
        print(f"WARNING: the CPUs were only {info['cpu_idle_pct_before']:.0f}% idle just before the bench: other processes "
              "compete for them and the figures are lower than on an idle machine")
    print(f"{info['cpus']} CPUs, Python {info['python']}, rmem_max {info.get('rmem_max')}, "
          f"~{rows[0]['bare']['datagram_bytes_avg']:.0f}-byte datagrams, {args.seconds:g} s per run")
    header = (f"{'target/s':>9} | {'sent/s':>8} {'bare rx/s':>10} {'loss%':>6} | "
              f"{'sent/s':>8} {'coll acc/s':>10} {'loss%':>6} | {'coll/bare':>9}")
    print(header)
    print("-" * len(header))
    for row in rows:
        b, c = row["bare"], row["collector"]
        print(f"{row['target_per_s']:>9} | {b['sent_per_s']:>8} {b['accepted_per_s']:>10} {b['loss_pct']:>6.2f} | "
              f"{c['sent_per_s']:>8} {c['accepted_per_s']:>10} {c['loss_pct']:>6.2f} | {row['ratio_collector_bare']:>9}")
    for row in rows:
        c = row["collector"]
        if c["landed_messages"] != c["accepted"] or c["landed_lines_on_disk"] != c["accepted"]:
            print(f"WARNING at {row['target_per_s']}/s: accepted {c['accepted']} but landed {c['landed_messages']} "
                  f"({c['landed_lines_on_disk']} lines on disk)")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    result = {"bench": "ingest", "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": info,
              "seconds_per_run": args.seconds, "results": rows}
    tmp = RESULTS.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, RESULTS)
    print(f"results: {RESULTS.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
