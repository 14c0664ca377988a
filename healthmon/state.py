"""Small process state shared through files in ``<data_dir>/state``.

Each process writes its own counters as one JSON file, replaced atomically
(``collector-<id>.json``, ``speed.json``); the batch layer appends one JSON
line per build to ``batch_runs.jsonl``.  The API reads them for
``/api/v1/pipeline``.  Files, not a database, so that no process can block
another.
"""

from __future__ import annotations

import os
from pathlib import Path

import orjson

BATCH_RUNS = "batch_runs.jsonl"


def write_state(state_dir: Path, name: str, data: dict) -> None:
    """Replace ``<state_dir>/<name>.json`` with ``data``, atomically."""
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    tmp = state_dir / f".{name}.json.{os.getpid()}.tmp"
    tmp.write_bytes(orjson.dumps(data))
    os.replace(tmp, state_dir / f"{name}.json")


def read_state(state_dir: Path, name: str) -> dict | None:
    try:
        return orjson.loads((Path(state_dir) / f"{name}.json").read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return None


def read_states(state_dir: Path, prefix: str) -> dict[str, dict]:
    """Every state file whose name starts with ``prefix``, by name."""
    out = {}
    for path in sorted(Path(state_dir).glob(f"{prefix}*.json")):
        data = read_state(state_dir, path.stem)
        if data is not None:
            out[path.stem] = data
    return out


def append_run(state_dir: Path, record: dict) -> None:
    """Record one batch build's outcome (one JSON line)."""
    Path(state_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(state_dir) / BATCH_RUNS, "ab") as fh:
        fh.write(orjson.dumps(record) + b"\n")


def read_runs(state_dir: Path, last: int = 20) -> list[dict]:
    """The last ``last`` batch build records, newest first."""
    try:
        lines = (Path(state_dir) / BATCH_RUNS).read_bytes().splitlines()
    except FileNotFoundError:
        return []
    runs = []
    for line in reversed(lines):
        try:
            runs.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            continue
        if len(runs) >= last:
            break
    return runs
