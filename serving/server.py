"""Serve the API with waitress: ``healthmon serve`` (or ``python -m serving.server``).

``run(settings)`` binds ``api_host:api_port`` with ``api_threads`` worker
threads, logs ``API listening on http://host:port`` and serves until SIGTERM or
SIGINT; then it stops accepting, lets the answers in flight go out (up to
``GRACE_S``), stops the workers and returns 0.  ``ApiServer`` is the same
server as an object, for tests and for a supervisor that runs it in a thread
(``serve_forever()`` in one thread, ``stop()`` from another).  A running server
follows the view files (``create_app``'s ``follow_views``): one thread per
process attaches newly published files and prepares the answers requests
asked for lately before requests read them (``serving.warming``).

``api_processes`` > 1 (0: one per core): one Python process answers on at most
one core (the GIL), so ``run`` binds the listening socket once and forks that
many server processes that all accept on it, each a whole ``ApiServer`` with
its own threads, view reader and cache.  The parent only supervises, as the
collector's receiver group does (``ingest.group``): SIGTERM or SIGINT to it is
passed to every server as SIGTERM, each lets its answers in flight go out and
stops; a server that exits without being asked stops the others and the
parent exits 1; a server whose parent dies gets SIGTERM from the kernel.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time

from waitress import wasyncore
from waitress.server import create_server

from healthmon.config import ConfigError, Settings, load_settings
from healthmon.forked import ForkedGroup, become_worker
from serving.app import create_app

log = logging.getLogger("healthmon.serving")

GRACE_S = 3.0

# waitress warns "Task queue depth is N" whenever a request waits for a free thread: under load that is a log line
# per request (and its write hands the GIL over), while the request latency histogram on /metrics already shows it.
logging.getLogger("waitress.queue").setLevel(logging.ERROR)


class ApiServer:
    """A waitress server around ``create_app(settings)`` (or ``app``), stoppable from any thread.

    ``sock``: a listening socket to accept on (shared by ``api_processes``) instead of binding ``api_host:api_port``.
    """

    def __init__(self, settings: Settings, app=None, sock: socket.socket | None = None) -> None:
        self.app = app if app is not None else create_app(settings)
        where = {"sockets": [sock]} if sock is not None else {"host": settings.api_host, "port": settings.api_port}
        self._server = create_server(
            self.app,
            **where,
            threads=settings.api_threads,
            ident="healthmon",
            clear_untrusted_proxy_headers=True,
        )
        self.host = self._server.effective_host
        self.port = int(self._server.effective_port)
        self.url = f"http://{self.host}:{self.port}"
        self._stop = threading.Event()
        self._stopped = threading.Event()

    def serve_forever(self) -> None:
        server = self._server
        socket_map = server._map
        timeout = server.adj.asyncore_loop_timeout
        follow_views = self.app.extensions.get("healthmon.follow_views")
        if follow_views is not None:
            follow_views()  # new view files are attached and prepared in the background: no request waits for them
        try:
            while not self._stop.is_set():
                wasyncore.loop(timeout=timeout, map=socket_map, use_poll=True, count=1)
            # Stop accepting, then let answers in flight go out.
            server.del_channel()
            server.socket.close()
            deadline = time.monotonic() + GRACE_S
            while time.monotonic() < deadline and any(_busy(ch) for ch in list(socket_map.values())):
                wasyncore.loop(timeout=0.05, map=socket_map, use_poll=True, count=1)
        finally:
            server.task_dispatcher.shutdown(timeout=GRACE_S)
            wasyncore.close_all(socket_map)
            reader = self.app.extensions.get("healthmon.reader")
            if reader is not None:
                reader.close_all()
            self._stopped.set()

    def stop(self, wait: float | None = None) -> None:
        """Ask the server to stop (safe from a signal handler or another thread)."""
        self._stop.set()
        try:
            self._server.trigger.pull_trigger()
        except OSError:
            pass
        if wait:
            self._stopped.wait(wait)


def _busy(channel) -> bool:
    return bool(getattr(channel, "requests", None) or getattr(channel, "total_outbufs_len", 0))


def api_processes(settings: Settings) -> int:
    """How many server processes ``api_processes`` asks for (0: one per core this process may use)."""
    return settings.api_processes or len(os.sched_getaffinity(0))


def run(settings: Settings) -> int:
    """Serve the API until SIGTERM/SIGINT; 0 on a clean stop."""
    processes = api_processes(settings)
    if processes > 1:
        return run_group(settings, processes)
    try:
        server = ApiServer(settings)
    except OSError as exc:
        log.error("cannot listen on %s:%s: %s", settings.api_host, settings.api_port, exc)
        return 1
    log.info("API listening on %s", server.url)
    return _serve_until_signal(server)


def _serve_until_signal(server: ApiServer, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)) -> int:
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in signals:
            previous[sig] = signal.signal(sig, lambda signum, frame: server.stop())
        signal.pthread_sigmask(signal.SIG_UNBLOCK, signals)  # a server process: a SIGTERM passed on while it started stops it now
    try:
        server.serve_forever()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.info("API stopped")
    return 0


def run_group(settings: Settings, processes: int) -> int:
    """Bind the API's socket, fork ``processes`` servers that accept on it and supervise them; 0 when all stopped cleanly."""
    host = settings.api_host
    try:
        sock = socket.create_server((host, settings.api_port), family=socket.AF_INET6 if ":" in host else socket.AF_INET,
                                    backlog=1024)
    except OSError as exc:
        log.error("cannot listen on %s:%s: %s", host, settings.api_port, exc)
        return 1
    sock.setblocking(False)
    with sock:
        group = ForkedGroup([(f"api-{k}", _server_main, (settings, sock, os.getpid())) for k in range(processes)], "API server")

        def started(servers) -> None:
            log.info("API listening on http://%s:%d (%d processes, pids %s)", *sock.getsockname()[:2], len(servers),
                     ", ".join(str(s.pid) for s in servers))

        code = group.run(started)
    if code:
        log.error("API stopped; servers exited with %s", group.exit_codes)
    else:
        log.info("API stopped: all %d servers", processes)
    return code


def _server_main(settings: Settings, sock: socket.socket, parent_pid: int) -> None:
    """One server process (forked by the parent): a whole ``ApiServer`` accepting on the shared socket."""
    become_worker(parent_pid)
    sys.exit(_serve_until_signal(ApiServer(settings, sock=sock), (signal.SIGTERM,)))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        _settings = load_settings()
    except ConfigError as exc:
        print(f"healthmon serve: bad setting: {exc}", file=sys.stderr)
        sys.exit(2)
    sys.exit(run(_settings))
