"""Serve the API with waitress: ``healthmon serve`` (or ``python -m serving.server``).

``run(settings)`` binds ``api_host:api_port`` with ``api_threads`` worker
threads, logs ``API listening on http://host:port`` and serves until SIGTERM or
SIGINT; then it stops accepting, lets the answers in flight go out (up to
``GRACE_S``), stops the workers and returns 0.  ``ApiServer`` is the same
server as an object, for tests and for a supervisor that runs it in a thread
(``serve_forever()`` in one thread, ``stop()`` from another).
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time

from waitress import wasyncore
from waitress.server import create_server

from healthmon.config import ConfigError, Settings, load_settings
from serving.app import create_app

log = logging.getLogger("healthmon.serving")

GRACE_S = 3.0


class ApiServer:
    """A waitress server around ``create_app(settings)`` (or ``app``), stoppable from any thread."""

    def __init__(self, settings: Settings, app=None) -> None:
        self.app = app if app is not None else create_app(settings)
        self._server = create_server(
            self.app,
            host=settings.api_host,
            port=settings.api_port,
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


def run(settings: Settings) -> int:
    """Serve the API until SIGTERM/SIGINT; 0 on a clean stop."""
    try:
        server = ApiServer(settings)
    except OSError as exc:
        log.error("cannot listen on %s:%s: %s", settings.api_host, settings.api_port, exc)
        return 1
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, lambda signum, frame: server.stop())
    log.info("API listening on %s", server.url)
    try:
        server.serve_forever()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.info("API stopped")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        _settings = load_settings()
    except ConfigError as exc:
        print(f"healthmon serve: bad setting: {exc}", file=sys.stderr)
        sys.exit(2)
    sys.exit(run(_settings))
