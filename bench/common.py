"""What the benchmarks share: the machine they ran on and how busy it was meanwhile.

The machine is shared with other work, so every benchmark records the load
average at its start and end and the CPU that other processes took while it
measured (``CpuWatch``): a figure is comparable only with the load it was
taken under.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from collections.abc import Callable, Iterator
from pathlib import Path


def machine() -> dict:
    """Python, CPU count, platform and the load average now (``loadavg_at_start``)."""
    return {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform(),
            "loadavg_at_start": os.getloadavg()}


def write_results(result: dict, out: Path, chart: Callable[[dict, Path], None]) -> None:
    """``result`` as JSON at ``out`` (replaced whole) and ``chart(result, path)`` beside it as PNG."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, out)
    chart(result, out.with_suffix(".png"))


@contextlib.contextmanager
def figure(path: Path, title: str, *grid, **options) -> Iterator[tuple]:
    """``(pyplot, figure, axes)`` of ``pyplot.subplots(*grid, **options)`` (Agg backend).

    On exit ``title`` goes on top and the chart is saved at ``path`` (PNG).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(*grid, **options)
    try:
        yield plt, fig, axes
        fig.suptitle(title, fontsize=9)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)


class CpuWatch:
    """CPU used on the whole machine, by this process tree and by everything else, between start and ``stop()``.

    The machine is shared: the share of others tells whether a figure was
    measured on a quiet machine.
    """

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.machine0, self.ours0 = self._machine(), self.ours()

    @staticmethod
    def _machine() -> float:
        import psutil

        times = psutil.cpu_times()
        return times.user + times.nice + times.system + times.irq + times.softirq + getattr(times, "steal", 0.0)

    @staticmethod
    def ours() -> float:
        """CPU seconds used so far by this process and its children (a Spark JVM, worker processes)."""
        return tree_cpu_s()

    def stop(self) -> dict:
        """Cores busy on average: ``machine``, ``ours`` (this process and its children), ``others``."""
        seconds = max(1e-9, time.monotonic() - self.started)
        machine = (self._machine() - self.machine0) / seconds
        ours = (self.ours() - self.ours0) / seconds
        return {"machine_cores": round(machine, 2), "ours_cores": round(ours, 2), "others_cores": round(max(0.0, machine - ours), 2)}


def tree_cpu_s(pid: int | None = None) -> float:
    """CPU seconds used so far by process ``pid`` (this one if None) and its children, those it waited for included."""
    import psutil

    root = psutil.Process(pid)
    total = sum(root.cpu_times()[:4])  # user, system, and of children waited for
    for child in root.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.NoSuchProcess:
            pass
    return total
