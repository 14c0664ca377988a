"""A real single-node Apache Hadoop HDFS that healthmon starts itself.

``healthmon hdfs up`` runs the NameNode and one DataNode as two background JVM
processes, from the Hadoop jars that ``make setup`` fetches from Maven Central
into ``<repo>/.hadoop/lib`` (``hadoop/pom.xml``): no Hadoop tarball, no Docker.
The classes are the ones Hadoop's own ``hdfs namenode`` / ``hdfs datanode``
commands run.

Everything lives under ``settings.hdfs_dir`` (``<data_dir>/hdfs``)::

    conf/       core-site.xml, hdfs-site.xml, log4j.properties (rewritten at every start),
                webapps/ (empty web apps: the Maven jars do not ship Hadoop's web UI)
    name/       NameNode metadata (fsimage, edits); formatted on the first start only
    data/       DataNode blocks
    logs/       namenode.log, datanode.log (log4j, rolled), namenode.out, datanode.out (JVM stdout/stderr)
    run/        namenode.pid, datanode.pid

Every listener binds ``hdfs_host`` (127.0.0.1) on the configured ports: NameNode
RPC ``hdfs_rpc_port`` (8020), NameNode HTTP + WebHDFS ``hdfs_http_port`` (9870),
DataNode transfer/HTTP/IPC ``hdfs_datanode_port``/``_http_port``/``_ipc_port``
(9866/9864/9867).  Permissions are off (``dfs.permissions.enabled=false``) so
the WebHDFS user (``hdfs_user``, simple authentication) may write anywhere;
replication is 1.

Decisions for one DataNode:

- safe mode: the NameNode leaves it as soon as the DataNode has reported the
  blocks (threshold 0.999, at least 1 live DataNode) with no 30 s extension
  (``dfs.namenode.safemode.extension=0``), so a restart is ready in seconds;
- a DataNode that stops is declared dead after ~30 s instead of 10.5 min
  (recheck interval), so ``status`` tells the truth soon;
- the JVMs run C1 only (``-XX:TieredStopAtLevel=1``) with the serial GC: on two
  cores a (re)start is ready in ~5-7 s instead of ~9 s (the first start formats
  too: ~8 s); a landing store of a few files a second needs no C2;
- Java 17: the ``--add-opens`` flags of Hadoop's own launcher (:data:`JAVA17_FLAGS`);
- the Maven jars carry no web UI: empty ``webapps/`` dirs on the classpath let
  the HTTP servers start (WebHDFS and ``/jmx`` are servlets and work);
- "ready" (``wait_ready``) means: the NameNode answers on HTTP, is active, out
  of safe mode, has a live DataNode with capacity, and a small WebHDFS write
  (create + delete of ``/tmp/.healthmon-ready-*``) succeeds.

Public API: :func:`up`, :func:`down`, :func:`status` (an :class:`HdfsStatus`),
:func:`start_namenode`, :func:`start_datanode`, :func:`stop_namenode`,
:func:`stop_datanode`, :func:`wait_ready`, :func:`run` (the CLI entry) and the
URL helpers :func:`fs_url`, :func:`webhdfs_url`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from xml.sax.saxutils import escape

from healthmon.config import Settings

log = logging.getLogger("healthmon.hdfs")

REPO_DIR = Path(__file__).resolve().parent.parent
LIB_DIR = REPO_DIR / ".hadoop" / "lib"

NAMENODE_CLASS = "org.apache.hadoop.hdfs.server.namenode.NameNode"
DATANODE_CLASS = "org.apache.hadoop.hdfs.server.datanode.DataNode"
_CLASSES = {"namenode": NAMENODE_CLASS, "datanode": DATANODE_CLASS}

# Hadoop 3.5 on Java 17: the JVM flags Hadoop's own launcher adds on JDK 17+
# (hadoop-functions.sh#hadoop_finalize_jpms_opts; the same list is
# <extraJavaTestArgs> in org.apache.hadoop:hadoop-project:3.5.0's pom).  The
# daemons also start and serve WebHDFS without them here; they are kept for the
# code paths that reflect into JDK internals, as Hadoop itself does on JDK 17.
JAVA17_FLAGS = (
    "-XX:+IgnoreUnrecognizedVMOptions",
    "--add-opens=java.base/java.io=ALL-UNNAMED",
    "--add-opens=java.base/java.lang=ALL-UNNAMED",
    "--add-opens=java.base/java.lang.reflect=ALL-UNNAMED",
    "--add-opens=java.base/java.math=ALL-UNNAMED",
    "--add-opens=java.base/java.net=ALL-UNNAMED",
    "--add-opens=java.base/java.text=ALL-UNNAMED",
    "--add-opens=java.base/java.util=ALL-UNNAMED",
    "--add-opens=java.base/java.util.concurrent=ALL-UNNAMED",
    "--add-opens=java.base/java.util.zip=ALL-UNNAMED",
    "--add-opens=java.base/sun.security.util=ALL-UNNAMED",
    "--add-opens=java.base/sun.security.x509=ALL-UNNAMED",
    "--enable-native-access=ALL-UNNAMED",
)

STOP_TIMEOUT_S = 30.0


class HdfsError(RuntimeError):
    """The local HDFS cannot be started, or did not become ready; the message says why."""


# --------------------------------------------------------------------------- paths and URLs


def _dirs(settings: Settings) -> dict[str, Path]:
    root = settings.hdfs_dir
    return {
        "root": root,
        "conf": root / "conf",
        "name": root / "name",
        "data": root / "data",
        "logs": root / "logs",
        "run": root / "run",
        "tmp": root / "tmp",
    }


def fs_url(settings: Settings) -> str:
    """``hdfs://host:rpc_port``: the file system URL of the local HDFS (fs.defaultFS)."""
    return f"hdfs://{settings.hdfs_host}:{settings.hdfs_rpc_port}"


def webhdfs_url(settings: Settings) -> str:
    """``http://host:http_port``: the NameNode's HTTP address, which serves WebHDFS and JMX."""
    return f"http://{settings.hdfs_host}:{settings.hdfs_http_port}"


def _pid_file(settings: Settings, role: str) -> Path:
    return _dirs(settings)["run"] / f"{role}.pid"


def _log_file(settings: Settings, role: str) -> Path:
    return _dirs(settings)["logs"] / f"{role}.log"


def _out_file(settings: Settings, role: str) -> Path:
    return _dirs(settings)["logs"] / f"{role}.out"


# --------------------------------------------------------------------------- configuration


def _site_xml(props: dict[str, object]) -> str:
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        "<!-- written by healthmon.hdfs_cluster at every start: edit the settings, not this file -->",
        "<configuration>",
    ]
    for name, value in props.items():
        if isinstance(value, bool):
            value = str(value).lower()
        lines.append(f"  <property><name>{escape(name)}</name><value>{escape(str(value))}</value></property>")
    lines.append("</configuration>")
    return "\n".join(lines) + "\n"


def core_site(settings: Settings) -> dict[str, object]:
    """The core-site.xml properties of the local HDFS."""
    d = _dirs(settings)
    return {
        "fs.defaultFS": fs_url(settings),
        "hadoop.tmp.dir": str(d["tmp"]),
        "hadoop.http.staticuser.user": settings.hdfs_user,
        # Without it every HTTP server warns that it cannot read ~/hadoop-http-auth-signature-secret.
        "hadoop.http.authentication.signature.secret.file": str(d["conf"] / "http-auth-signature-secret"),
        # The DataNode, started with the NameNode, retries its first connection every 0.25 s, not 1 s.
        "ipc.client.connect.retry.interval": 250,
    }


def hdfs_site(settings: Settings) -> dict[str, object]:
    """The hdfs-site.xml properties: dirs under hdfs_dir, every address on hdfs_host, one DataNode."""
    d = _dirs(settings)
    host = settings.hdfs_host
    return {
        "dfs.namenode.name.dir": d["name"].as_uri(),
        "dfs.datanode.data.dir": d["data"].as_uri(),
        "dfs.replication": 1,
        "dfs.namenode.rpc-address": f"{host}:{settings.hdfs_rpc_port}",
        "dfs.namenode.rpc-bind-host": host,
        "dfs.namenode.http-address": f"{host}:{settings.hdfs_http_port}",
        "dfs.namenode.http-bind-host": host,
        "dfs.http.policy": "HTTP_ONLY",
        "dfs.datanode.address": f"{host}:{settings.hdfs_datanode_port}",
        "dfs.datanode.http.address": f"{host}:{settings.hdfs_datanode_http_port}",
        "dfs.datanode.ipc.address": f"{host}:{settings.hdfs_datanode_ipc_port}",
        # The DataNode registers as hdfs_host, so WebHDFS redirects clients to an address they can reach.
        "dfs.datanode.hostname": host,
        "dfs.namenode.datanode.registration.ip-hostname-check": False,
        "dfs.permissions.enabled": False,
        "dfs.webhdfs.enabled": True,
        # One DataNode: leave safe mode once it has reported its blocks, without the 30 s extension.
        "dfs.namenode.safemode.threshold-pct": 0.999,
        "dfs.namenode.safemode.min.datanodes": 1,
        "dfs.namenode.safemode.extension": 0,
        # A stopped DataNode is dead after 2 * recheck + 10 * heartbeat = 2*10 s + 10*1 s = 30 s.
        "dfs.heartbeat.interval": 1,
        "dfs.namenode.heartbeat.recheck-interval": 10000,
        # The NameNode enters safe mode when its volume has less free space than this (default 100 MB).
        "dfs.namenode.resource.du.reserved": 50 * 1024 * 1024,
        # One replica is all there is: never exclude the only DataNode for a write pipeline.
        "dfs.client.block.write.replace-datanode-on-failure.enable": False,
    }


LOG4J_PROPERTIES = """\
# written by healthmon.hdfs_cluster: the daemon log, rolled at 10 MB, 5 kept
hadoop.log.dir=.
hadoop.log.file=hadoop.log
log4j.rootLogger=INFO,RFA
log4j.appender.RFA=org.apache.log4j.RollingFileAppender
log4j.appender.RFA.File=${hadoop.log.dir}/${hadoop.log.file}
log4j.appender.RFA.MaxFileSize=10MB
log4j.appender.RFA.MaxBackupIndex=5
log4j.appender.RFA.layout=org.apache.log4j.PatternLayout
log4j.appender.RFA.layout.ConversionPattern=%d{ISO8601} %p %c{2}: %m%n
# per-operation chatter
log4j.logger.org.apache.hadoop.hdfs.server.namenode.FSNamesystem.audit=WARN
log4j.logger.org.apache.hadoop.hdfs.StateChange=WARN
log4j.logger.BlockStateChange=WARN
log4j.logger.org.apache.hadoop.hdfs.server.datanode.DataNode.clienttrace=WARN
log4j.logger.org.apache.hadoop.util.NativeCodeLoader=ERROR
# one "Added DIR lock" line per block directory (~1000) at every DataNode start
log4j.logger.org.apache.hadoop.hdfs.server.datanode.fsdataset.impl.FsDatasetImpl=WARN
"""


def write_conf(settings: Settings) -> Path:
    """Write the configuration directory from the settings; return it."""
    d = _dirs(settings)
    for key in ("conf", "logs", "run", "tmp"):
        d[key].mkdir(parents=True, exist_ok=True)
    conf = d["conf"]
    (conf / "core-site.xml").write_text(_site_xml(core_site(settings)))
    (conf / "hdfs-site.xml").write_text(_site_xml(hdfs_site(settings)))
    (conf / "log4j.properties").write_text(LOG4J_PROPERTIES)
    secret = conf / "http-auth-signature-secret"
    if not secret.exists():
        secret.write_text(uuid.uuid4().hex)
        secret.chmod(0o600)
    # Hadoop's HTTP servers look up webapps/<name> on the classpath; the Maven jars do not ship
    # the web UI, so empty web apps stand in (WebHDFS, JMX and /conf are servlets, not web-app files).
    for app in ("hdfs", "datanode", "static"):
        (conf / "webapps" / app).mkdir(parents=True, exist_ok=True)
    return conf


# --------------------------------------------------------------------------- processes


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").exists():
        return str(Path(java_home) / "bin" / "java")
    java = shutil.which("java")
    if not java:
        raise HdfsError("java not found on PATH (HDFS needs Java 17+): run make setup")
    return java


def _classpath(settings: Settings) -> str:
    if not LIB_DIR.is_dir() or not any(LIB_DIR.glob("hadoop-hdfs-*.jar")):
        raise HdfsError(
            f"the Hadoop jars are missing from {LIB_DIR}: run make setup, which fetches them with Maven"
            " (bash scripts/setup.sh when make thinks setup is done)"
        )
    return f"{_dirs(settings)['conf']}:{LIB_DIR}/*"


def java_command(settings: Settings, role: str, *args: str) -> list[str]:
    """The java command line that runs a Hadoop daemon class (``role``: namenode or datanode)."""
    logs = _dirs(settings)["logs"]
    return [
        _java(),
        f"-Dproc_{role}",  # as Hadoop's scripts do: names the process in ps/jps
        f"-Xmx{settings.hdfs_heap}",
        "-XX:+UseSerialGC",  # two cores: a small heap needs no parallel collector threads
        # C1 only: ready in ~5-7 s instead of ~9 s on two cores (see the module docstring).
        "-XX:TieredStopAtLevel=1",
        "-Djava.net.preferIPv4Stack=true",
        f"-Dhadoop.log.dir={logs}",
        f"-Dhadoop.log.file={role}.log",
        f"-Dhadoop.home.dir={_dirs(settings)['root']}",
        f"-Dhadoop.id.str={settings.hdfs_user}",
        *JAVA17_FLAGS,
        "-cp",
        _classpath(settings),
        _CLASSES[role],
        *args,
    ]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


# Popen objects of the daemons this process started: polled so that they do not stay zombies.
_children: dict[int, subprocess.Popen] = {}


def _reap() -> None:
    """Collect the exit status of daemons this process started that have exited (stopped by anyone)."""
    for pid, child in list(_children.items()):
        if child.poll() is not None:
            _children.pop(pid, None)


def _alive(pid: int, role: str) -> bool:
    child = _children.get(pid)
    if child is not None and child.poll() is not None:
        _children.pop(pid, None)
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if stat.rsplit(")", 1)[-1].split()[0] == "Z":
        return False
    # The pid may have been reused by another program since the pid file was written.
    return _CLASSES[role] in _cmdline(pid)


def daemon_pid(settings: Settings, role: str) -> int | None:
    """The pid of the running ``role`` daemon (namenode or datanode), or None; removes a stale pid file."""
    _reap()
    path = _pid_file(settings, role)
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    if _alive(pid, role):
        return pid
    path.unlink(missing_ok=True)
    return None


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def ports(settings: Settings, role: str) -> dict[str, int]:
    """The TCP ports a daemon listens on, by what they are for."""
    if role == "namenode":
        return {"rpc": settings.hdfs_rpc_port, "http": settings.hdfs_http_port}
    return {"data": settings.hdfs_datanode_port, "http": settings.hdfs_datanode_http_port, "ipc": settings.hdfs_datanode_ipc_port}


def _check_ports(settings: Settings, role: str) -> None:
    """Fail clearly when another program holds a port: else a foreign server could pass our readiness checks."""
    for what, port in ports(settings, role).items():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Java's server sockets do
            try:
                sock.bind((settings.hdfs_host, port))
            except OSError as exc:
                where = f"{settings.hdfs_host}:{port}"
                raise HdfsError(f"cannot start the {role}: its {what} port {where} is in use ({exc.strerror})") from None


def _start(settings: Settings, role: str) -> int:
    pid = daemon_pid(settings, role)
    if pid is not None:
        log.info("%s already running (pid %d)", role, pid)
        return pid
    _check_ports(settings, role)
    write_conf(settings)
    cmd = java_command(settings, role)
    out_path = _out_file(settings, role)
    with open(out_path, "ab") as out:
        out.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} starting: {' '.join(cmd)}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=_dirs(settings)["root"], start_new_session=True
        )
    _children[proc.pid] = proc
    _pid_file(settings, role).write_text(f"{proc.pid}\n")
    log.info("%s started (pid %d), log %s", role, proc.pid, _log_file(settings, role))
    return proc.pid


def is_formatted(settings: Settings) -> bool:
    return (_dirs(settings)["name"] / "current" / "VERSION").exists()


def format_namenode(settings: Settings, timeout: float = 120.0) -> None:
    """Format the NameNode's metadata directory (non-interactive).  Its old data (and the blocks) are gone."""
    d = _dirs(settings)
    write_conf(settings)
    # Blocks of another namespace would stop the DataNode ("Incompatible clusterIDs").
    shutil.rmtree(d["data"], ignore_errors=True)
    cmd = java_command(settings, "namenode", "-format", "-force", "-nonInteractive", "-clusterid", "healthmon")
    out_path = d["logs"] / "namenode-format.out"
    with open(out_path, "wb") as out:
        done = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=d["root"], timeout=timeout)
    if done.returncode != 0 or not is_formatted(settings):
        raise HdfsError(f"formatting the NameNode failed (exit {done.returncode}); {out_path}:\n{_tail(out_path)}"
                        f"\n{_tail(_log_file(settings, 'namenode'))}")
    log.info("NameNode formatted: %s", d["name"])


def start_namenode(settings: Settings) -> int:
    """Start the NameNode in the background (formatting it on the first start only); return its pid.

    Does not wait for it: see :func:`wait_ready`.  Already running: returns its pid."""
    if daemon_pid(settings, "namenode") is None and not is_formatted(settings):
        _check_ports(settings, "namenode")
        format_namenode(settings)
    return _start(settings, "namenode")


def start_datanode(settings: Settings) -> int:
    """Start the DataNode in the background; return its pid.  Already running: returns its pid."""
    return _start(settings, "datanode")


def _stop(settings: Settings, role: str, timeout: float) -> bool:
    pid = daemon_pid(settings, role)
    if pid is None:
        _pid_file(settings, role).unlink(missing_ok=True)
        return False
    log.info("stopping %s (pid %d)", role, pid)
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout
    while _alive(pid, role) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid, role):
        log.warning("%s (pid %d) still running after %.0f s: SIGKILL", role, pid, timeout)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 10
        while _alive(pid, role) and time.monotonic() < deadline:
            time.sleep(0.1)
    child = _children.pop(pid, None)
    if child is not None:
        try:
            child.wait(5)
        except subprocess.TimeoutExpired:
            pass
    _pid_file(settings, role).unlink(missing_ok=True)
    return True


def stop_namenode(settings: Settings, timeout: float = STOP_TIMEOUT_S) -> bool:
    """SIGTERM the NameNode, wait up to ``timeout`` s, then SIGKILL; True if it was running."""
    return _stop(settings, "namenode", timeout)


def stop_datanode(settings: Settings, timeout: float = STOP_TIMEOUT_S) -> bool:
    """SIGTERM the DataNode, wait up to ``timeout`` s, then SIGKILL; True if it was running."""
    return _stop(settings, "datanode", timeout)


# --------------------------------------------------------------------------- state


def _jmx(settings: Settings, query: str, timeout: float = 2.0) -> dict:
    url = f"{webhdfs_url(settings)}/jmx?qry={query}"
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - our own local NameNode
        beans = json.load(resp).get("beans", [])
    if not beans:
        raise HdfsError(f"no JMX bean {query}")
    return beans[0]


@dataclass
class HdfsStatus:
    """What ``healthmon hdfs status`` reports."""

    namenode_pid: int | None
    datanode_pid: int | None
    namenode_answers: bool = False
    namenode_state: str | None = None  # "active" when serving
    safe_mode: bool | None = None
    live_datanodes: int = 0
    dead_datanodes: int = 0
    capacity_bytes: int = 0
    remaining_bytes: int = 0
    used_bytes: int = 0
    files_total: int = 0
    blocks_total: int = 0
    fs_url: str = ""
    webhdfs_url: str = ""
    error: str | None = None

    @property
    def up(self) -> bool:
        """Both daemons run, the NameNode is active, out of safe mode, with a live DataNode."""
        return bool(
            self.namenode_pid and self.datanode_pid and self.namenode_answers and self.namenode_state == "active"
            and self.safe_mode is False and self.live_datanodes >= 1
        )

    def as_dict(self) -> dict:
        return {**asdict(self), "up": self.up}


def status(settings: Settings) -> HdfsStatus:
    """The state of the local HDFS: pids, and what the NameNode's JMX says (live DataNodes, capacity, safe mode)."""
    st = HdfsStatus(
        namenode_pid=daemon_pid(settings, "namenode"),
        datanode_pid=daemon_pid(settings, "datanode"),
        fs_url=fs_url(settings),
        webhdfs_url=webhdfs_url(settings),
    )
    if st.namenode_pid is None:
        return st
    try:
        nn = _jmx(settings, "Hadoop:service=NameNode,name=NameNodeStatus")
        fsn = _jmx(settings, "Hadoop:service=NameNode,name=FSNamesystemState")
        info = _jmx(settings, "Hadoop:service=NameNode,name=NameNodeInfo")
        runtime = _jmx(settings, "java.lang:type=Runtime")
    except (OSError, ValueError, HdfsError) as exc:
        st.error = f"NameNode HTTP {webhdfs_url(settings)}: {exc}"
        return st
    if str(runtime.get("Name", "")).split("@")[0] != str(st.namenode_pid):
        st.error = f"{webhdfs_url(settings)} is served by another NameNode (JVM {runtime.get('Name')}), not pid {st.namenode_pid}"
        return st
    st.namenode_answers = True
    st.namenode_state = nn.get("State")
    st.safe_mode = fsn.get("FSState") != "Operational" or bool(info.get("Safemode"))
    st.live_datanodes = int(fsn.get("NumLiveDataNodes", 0))
    st.dead_datanodes = int(fsn.get("NumDeadDataNodes", 0))
    st.capacity_bytes = int(fsn.get("CapacityTotal", 0))
    st.remaining_bytes = int(fsn.get("CapacityRemaining", 0))
    st.used_bytes = int(fsn.get("CapacityUsed", 0))
    st.files_total = int(fsn.get("FilesTotal", 0))
    st.blocks_total = int(fsn.get("BlocksTotal", 0))
    if st.safe_mode and info.get("Safemode"):
        st.error = str(info["Safemode"]).strip()
    return st


def _probe_write(settings: Settings) -> None:
    """Create and delete a small file through WebHDFS: the NameNode and the DataNode both serve."""
    import requests

    base = f"{webhdfs_url(settings)}/webhdfs/v1/tmp/.healthmon-ready-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    user = {"user.name": settings.hdfs_user}
    resp = requests.put(base, params={"op": "CREATE", "overwrite": "true", **user}, allow_redirects=False, timeout=10)
    if resp.status_code != 307:  # the NameNode redirects the data to a DataNode
        raise HdfsError(f"WebHDFS CREATE: HTTP {resp.status_code} {resp.text[:300]}")
    data = requests.put(resp.headers["Location"], data=b"ok", timeout=10)
    if data.status_code != 201:
        raise HdfsError(f"WebHDFS write to the DataNode: HTTP {data.status_code} {data.text[:300]}")
    requests.delete(base, params={"op": "DELETE", **user}, timeout=10).raise_for_status()


def wait_ready(settings: Settings, timeout: float = 120.0) -> HdfsStatus:
    """Wait until HDFS serves: NameNode active and out of safe mode, a live DataNode, a test write succeeds.

    Raises :class:`HdfsError` with the tail of the daemon's log when a daemon exits or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    last = "not checked yet"
    while True:
        for role in ("namenode", "datanode"):
            if daemon_pid(settings, role) is None:
                path = _log_file(settings, role)
                raise HdfsError(f"{role} is not running; last lines of {path}:\n{_tail(path)}\n"
                                f"{_out_file(settings, role)}:\n{_tail(_out_file(settings, role), 10)}")
        st = status(settings)
        if st.up and st.capacity_bytes > 0:
            try:
                _probe_write(settings)
                return st
            except Exception as exc:  # the DataNode may not have sent its first heartbeat yet
                last = f"test write failed: {exc}"
        else:
            last = st.error or (f"answers={st.namenode_answers} state={st.namenode_state} safe_mode={st.safe_mode} "
                                f"live_datanodes={st.live_datanodes} capacity={st.capacity_bytes}")
        if time.monotonic() >= deadline:
            raise HdfsError(f"HDFS not ready after {timeout:.0f} s: {last} (logs in {_dirs(settings)['logs']})")
        time.sleep(0.25)


# --------------------------------------------------------------------------- up / down


def up(settings: Settings, timeout: float = 180.0) -> HdfsStatus:
    """Start whatever is not running (formatting on the first start), wait until ready; return the status.

    Idempotent: when both daemons already run it only waits for readiness."""
    already = daemon_pid(settings, "namenode") is not None and daemon_pid(settings, "datanode") is not None
    if already:
        log.info("HDFS already running")
    started = time.monotonic()
    try:
        start_namenode(settings)
        start_datanode(settings)
        st = wait_ready(settings, timeout)
    except BaseException:
        if not already:  # do not leave half a cluster behind
            down(settings)
        raise
    log.info("HDFS ready in %.1f s", time.monotonic() - started)
    return st


def down(settings: Settings, timeout: float = STOP_TIMEOUT_S) -> bool:
    """Stop the DataNode, then the NameNode (SIGTERM, SIGKILL after ``timeout`` s); True if either was running."""
    datanode = stop_datanode(settings, timeout)
    namenode = stop_namenode(settings, timeout)
    return datanode or namenode


# --------------------------------------------------------------------------- CLI


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def print_status(st: HdfsStatus) -> None:
    def pid(p: int | None) -> str:
        return f"running (pid {p})" if p else "not running"

    print(f"HDFS {'up' if st.up else 'down'}")
    print(f"  namenode  {pid(st.namenode_pid)}")
    print(f"  datanode  {pid(st.datanode_pid)}")
    if st.namenode_answers:
        print(f"  state     {st.namenode_state}, safe mode {'on' if st.safe_mode else 'off'}")
        print(f"  datanodes {st.live_datanodes} live, {st.dead_datanodes} dead")
        print(f"  capacity  {_gib(st.capacity_bytes)}, {_gib(st.remaining_bytes)} free, {_gib(st.used_bytes)} used by HDFS")
        print(f"  files     {st.files_total} files and directories, {st.blocks_total} blocks")
    if st.error:
        print(f"  note      {st.error}")
    print(f"  fs        {st.fs_url}")
    print(f"  webhdfs   {st.webhdfs_url}/webhdfs/v1/")


def run(settings: Settings, action: str = "status") -> int:
    """``healthmon hdfs up|down|status``: 0 on success (status: 0 when up, 1 when down)."""
    try:
        if action == "up":
            was_running = daemon_pid(settings, "namenode") is not None and daemon_pid(settings, "datanode") is not None
            started = time.monotonic()
            st = up(settings)
            if was_running:
                print("HDFS was already running")
            else:
                print(f"HDFS started in {time.monotonic() - started:.1f} s (data and logs in {settings.hdfs_dir})")
            print_status(st)
            print(f"landing URL for it: HEALTHMON_LANDING={settings.hdfs_landing_url}")
            return 0
        if action == "down":
            print("HDFS stopped" if down(settings) else "HDFS was not running")
            return 0
        if action == "status":
            st = status(settings)
            print_status(st)
            return 0 if st.up else 1
    except HdfsError as exc:
        print(f"healthmon hdfs {action}: {exc}", file=sys.stderr)
        return 1
    raise ValueError(f"unknown action {action!r}: expected up, down or status")
