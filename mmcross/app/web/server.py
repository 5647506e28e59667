"""Running the web application with uvicorn: in the foreground (``mmcross serve``) or in a
daemon thread beside the live service (``mmcross listen --serve PORT``).

The listening socket is bound before uvicorn starts, so port 0 gives a free port whose URL is
known (and logged) before the first request.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass

import uvicorn

from mmcross.app.web.app import create_app
from mmcross.app.web.settings import WebSettings
from mmcross.model.config import Config
from mmcross.model.errors import ConfigError

log = logging.getLogger(__name__)


def _bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: any free port)."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.create_server((host, port), family=family, backlog=128)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port} for the web server: {exc}") from exc
    sock.set_inheritable(True)
    return sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def _server(store_url: str, config: Config, host: str | None, port: int | None
            ) -> tuple[uvicorn.Server, socket.socket]:
    settings = WebSettings.from_config(config)
    app = create_app(store_url, config)
    sock = _bind(settings.host if host is None else host,
                 settings.port if port is None else port)
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False,
                                           lifespan="on"))
    return server, sock


def serve(store_url: str, config: Config, *, host: str | None = None, port: int | None = None,
          on_ready: Callable[[str], None] | None = None) -> None:
    """Serve the web application until interrupted (SIGINT/SIGTERM).

    Args:
        store_url: SQLAlchemy URL of the store, opened read-only.
        config: ``[web]`` host, port and page settings; matching windows.
        host, port: override ``[web] host``/``port`` (port 0: any free port).
        on_ready: called with the server's URL once the socket listens.
    """
    server, sock = _server(store_url, config, host, port)
    url = _url(sock)
    log.info("web page and JSON API at %s", url)
    if on_ready is not None:
        on_ready(url)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()


@dataclass
class RunningServer:
    """A web server running in a daemon thread: its URL and how to stop it."""

    url: str
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the server to finish and wait up to ``timeout`` seconds for its thread."""
        self.server.should_exit = True
        self.thread.join(timeout)


def start_server_thread(store_url: str, config: Config, *, host: str | None = None,
                        port: int | None = None) -> RunningServer:
    """Start the web application in a daemon thread (for ``mmcross listen --serve``)."""
    server, sock = _server(store_url, config, host, port)

    def run() -> None:
        try:
            server.run(sockets=[sock])
        finally:
            sock.close()

    thread = threading.Thread(target=run, name="mmcross-web", daemon=True)
    thread.start()
    url = _url(sock)
    log.info("web page and JSON API at %s", url)
    return RunningServer(url, server, thread)
