"""The landing store: where accepted messages land, immutable.

Layout (DESIGN.md), relative to the store's root URL::

    raw/type=<type>/date=YYYY-MM-DD/hour=HH/<collector>-<run>-<seq>.jsonl
    deadletter/date=YYYY-MM-DD/hour=HH/<collector>-<run>-<seq>.jsonl
    master/type=<type>/date=YYYY-MM-DD/hour=HH/part-*.parquet

Raw partitions are by the message's own ``ts`` (event time), so a late message
lands in its old hour and makes the batch layer rebuild that hour.  Dead letters
are partitioned by receive time.

Files are published whole: written under a hidden name (leading ``_``, which
Spark and every reader here skip) and renamed.  Publishing a path that already
exists is a no-op (segment names are unique, so it holds the same bytes): a
retry after a lost answer never ships a segment twice.

Two stores sit behind one small interface: ``file://`` (a local directory,
the light default) and ``hdfs://`` (a real HDFS, written through WebHDFS with
the ``hdfs`` package; Spark reads the same paths with its bundled Hadoop
client).
"""

from __future__ import annotations

import calendar
import os
import re
import shutil
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

HOUR_S = 3600
_HOUR_DIR_RE = re.compile(r"date=(\d{4}-\d{2}-\d{2})/hour=(\d{2})")


@dataclass(frozen=True)
class LandedFile:
    """A published file: path relative to the store root, size in bytes, mtime."""

    path: str
    size: int
    mtime: float


def hour_partition(ts: float) -> str:
    """``date=YYYY-MM-DD/hour=HH`` of the UTC hour holding ``ts``."""
    return time.strftime("date=%Y-%m-%d/hour=%H", time.gmtime(ts))


def hour_of_partition(path: str) -> int:
    """Epoch seconds of the hour whose ``date=/hour=`` directory ``path`` is in."""
    match = _HOUR_DIR_RE.search(path)
    if not match:
        raise ValueError(f"no date=/hour= partition in {path!r}")
    return calendar.timegm(time.strptime(f"{match[1]} {match[2]}", "%Y-%m-%d %H"))


def raw_dir(msg_type: str) -> str:
    return f"raw/type={msg_type}"


def master_dir(msg_type: str) -> str:
    return f"master/type={msg_type}"


def raw_segment_path(msg_type: str, ts: float, name: str) -> str:
    return f"{raw_dir(msg_type)}/{hour_partition(ts)}/{name}.jsonl"


def deadletter_segment_path(recv_ts: float, name: str) -> str:
    return f"deadletter/{hour_partition(recv_ts)}/{name}.jsonl"


def master_hour_dir(msg_type: str, hour_start: int) -> str:
    return f"{master_dir(msg_type)}/{hour_partition(hour_start)}"


def is_hidden(name: str) -> bool:
    return name.startswith(("_", "."))


class LandingStore(ABC):
    """Publish whole files atomically, list what is published, read and delete it."""

    url: str

    @abstractmethod
    def publish(self, path: str, data: bytes) -> None:
        """Write ``data`` under a hidden name, then rename it to ``path``."""

    @abstractmethod
    def list_files(self, prefix: str) -> list[LandedFile]:
        """Published (not hidden) files under ``prefix``, recursively; [] if absent."""

    @abstractmethod
    def read(self, path: str) -> bytes: ...

    @abstractmethod
    def makedirs(self, path: str) -> None:
        """Create directory ``path`` (and parents); no error if it exists."""

    @abstractmethod
    def delete(self, path: str) -> None:
        """Remove a file or a directory tree; no error if absent."""

    def uri(self, path: str = "") -> str:
        """Full URI of ``path`` for readers such as Spark."""
        return f"{self.url.rstrip('/')}/{path}" if path else self.url


class LocalLandingStore(LandingStore):
    """A landing store in a local directory (``file:///path``)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.root = Path(urlparse(url).path)
        self.root.mkdir(parents=True, exist_ok=True)

    def publish(self, path: str, data: bytes) -> None:
        final = self.root / path
        if final.exists():
            return
        final.parent.mkdir(parents=True, exist_ok=True)
        hidden = final.with_name(f"_{final.name}.tmp")
        with open(hidden, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(hidden, final)

    def list_files(self, prefix: str) -> list[LandedFile]:
        base = self.root / prefix
        out = []
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if not is_hidden(d)]
            for name in filenames:
                if is_hidden(name):
                    continue
                full = os.path.join(dirpath, name)
                try:
                    st = os.stat(full)
                except FileNotFoundError:
                    continue
                out.append(LandedFile(os.path.relpath(full, self.root), st.st_size, st.st_mtime))
        out.sort(key=lambda f: f.path)
        return out

    def read(self, path: str) -> bytes:
        return (self.root / path).read_bytes()

    def makedirs(self, path: str) -> None:
        (self.root / path).mkdir(parents=True, exist_ok=True)

    def delete(self, path: str) -> None:
        target = self.root / path
        if target.is_dir():
            shutil.rmtree(target, ignore_errors=True)
        else:
            target.unlink(missing_ok=True)


class HdfsLandingStore(LandingStore):
    """A landing store in HDFS (``hdfs://namenode:port/path``), written and listed through WebHDFS."""

    def __init__(self, url: str, webhdfs_url: str, user: str, timeout_s: float = 10.0) -> None:
        from hdfs import InsecureClient

        self.url = url.rstrip("/")
        self.root = urlparse(url).path.rstrip("/") or "/"
        # (connect, read) timeouts: an outage must fail a call quickly so that the collector spools.
        self.client = InsecureClient(webhdfs_url, user=user, timeout=(min(3.0, timeout_s), timeout_s))

    def _abs(self, path: str) -> str:
        return f"{self.root}/{path}" if path else self.root

    def publish(self, path: str, data: bytes) -> None:
        from hdfs import HdfsError

        final = self._abs(path)
        directory, name = final.rsplit("/", 1)
        hidden = f"{directory}/_{name}.tmp"
        self.client.write(hidden, data=data, overwrite=True)
        try:
            self.client.rename(hidden, final)
        except HdfsError:
            if self.client.status(final, strict=False) is None:
                raise
            self.client.delete(hidden)  # published before (a retry after a lost answer): keep the first

    def list_files(self, prefix: str) -> list[LandedFile]:
        from hdfs import HdfsError

        out: list[LandedFile] = []
        pending = [self._abs(prefix)]
        while pending:
            directory = pending.pop()
            try:
                entries = self.client.list(directory, status=True)
            except HdfsError as exc:
                if "does not exist" in str(exc) or "not a directory" in str(exc).lower():
                    continue
                raise
            for name, st in entries:
                if is_hidden(name):
                    continue
                full = f"{directory}/{name}"
                if st["type"] == "DIRECTORY":
                    pending.append(full)
                else:
                    out.append(LandedFile(full[len(self.root) + 1 :], st["length"], st["modificationTime"] / 1000.0))
        out.sort(key=lambda f: f.path)
        return out

    def read(self, path: str) -> bytes:
        with self.client.read(self._abs(path)) as reader:
            return reader.read()

    def makedirs(self, path: str) -> None:
        self.client.makedirs(self._abs(path))

    def delete(self, path: str) -> None:
        self.client.delete(self._abs(path), recursive=True)


def open_landing(url: str, webhdfs_url: str = "", user: str = "healthmon") -> LandingStore:
    """The landing store for ``url``: file:// or hdfs:// (reached through ``webhdfs_url``)."""
    if url.startswith("file://"):
        return LocalLandingStore(url)
    if url.startswith("hdfs://"):
        return HdfsLandingStore(url, webhdfs_url or f"http://{urlparse(url).hostname}:9870", user)
    raise ValueError(f"unsupported landing store URL: {url}")


def landing_for(settings) -> LandingStore:
    """The landing store the settings select."""
    return open_landing(settings.landing_url, settings.webhdfs, settings.hdfs_user)
