"""Serve the API with waitress: ``healthmon serve`` (or ``python -m serving.server``).

``run(settings)`` binds ``api_host:api_port`` with ``api_threads`` worker
threads, logs ``API listening on http://host:port`` and serves until SIGTERM or
SIGINT; then it stops accepting, lets the answers in flight go out (up to
``GRACE_S``), stops the workers and returns 0.  ``ApiServer`` is the same
server as an object, for tests and for a supervisor that runs it in a thread
(``serve_forever()`` in one thread, ``stop()`` from another).

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

import ctypes
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
import threading
import time

from waitress import wasyncore
from waitress.server import create_server

from healthmon.config import ConfigError, Settings, load_settings
from serving.app import create_app

log = logging.getLogger("healthmon.serving")

GRACE_S = 3.0
PR_SET_PDEATHSIG = 1  # prctl(2) option: the signal this process gets when its parent dies
POLL_S = 0.2  # how often the parent looks at its signal flags while it waits for the servers


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
        return ServerGroup(settings, sock, processes).run()


class ServerGroup:
    """The parent of ``api_processes`` servers: starts them, passes stop signals on, notices one that dies."""

    def __init__(self, settings: Settings, sock: socket.socket, processes: int) -> None:
        self.settings, self.sock, self.processes = settings, sock, processes
        self.signals = 0  # stop signals received (each is passed on to every server)

    def _on_signal(self, _signum, _frame) -> None:
        self.signals += 1

    def run(self) -> int:
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            return self._supervise()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _supervise(self) -> int:
        # fork: the parent has no thread, no app and no DuckDB yet; each server makes its own after the fork
        context = multiprocessing.get_context("fork")
        servers = []
        # SIGTERM stays blocked across the fork: a server gets one passed on early once its own handler is installed
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        try:
            for k in range(self.processes):
                server = context.Process(target=_server_main, name=f"api-{k}", args=(self.settings, self.sock, os.getpid()))
                server.start()
                servers.append(server)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        host, port = self.sock.getsockname()[:2]
        log.info("API listening on http://%s:%d (%d processes, pids %s)", host, port, len(servers),
                 ", ".join(str(s.pid) for s in servers))
        passed_on = 0
        failed = None
        while True:
            alive = [s for s in servers if s.exitcode is None]
            if not alive:
                break
            if failed is None and self.signals == 0:
                failed = next((s for s in servers if s.exitcode is not None), None)
                if failed is not None:
                    log.error("API server %s exited with %s without being asked to: stopping the others", failed.name, failed.exitcode)
                    self.signals = 1
            if self.signals > passed_on:
                passed_on = self.signals
                for server in alive:
                    try:
                        os.kill(server.pid, signal.SIGTERM)
                    except ProcessLookupError:
                        pass
            multiprocessing.connection.wait([s.sentinel for s in alive], timeout=POLL_S)
        codes = {s.name: s.exitcode for s in servers}
        if failed is not None or any(codes.values()):
            log.error("API stopped; servers exited with %s", codes)
            return 1
        log.info("API stopped: all %d servers", len(servers))
        return 0


def _server_main(settings: Settings, sock: socket.socket, parent_pid: int) -> None:
    """One server process (forked by the parent): a whole ``ApiServer`` accepting on the shared socket."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C signals the process group: the parent passes it on, once
    try:  # should the parent die, the kernel sends us SIGTERM: stop cleanly rather than serve on alone
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        sys.exit(1)
    sys.exit(_serve_until_signal(ApiServer(settings, sock=sock), (signal.SIGTERM,)))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        _settings = load_settings()
    except ConfigError as exc:
        print(f"healthmon serve: bad setting: {exc}", file=sys.stderr)
        sys.exit(2)
    sys.exit(run(_settings))
