"""Serves the console from the sidecar's event loop (uvicorn), beside the gRPC server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator

import uvicorn
from starlette.applications import Starlette

from latentguard.server.config import TLSSettings, UISettings

__all__ = ["ConsoleServer"]

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: the sidecar owns SIGINT and SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class ConsoleServer:
    """`await start()` binds the port and serves; `await stop()` ends it (live pages too)."""

    def __init__(self, app: Starlette, ui: UISettings, tls: TLSSettings) -> None:
        self._app = app
        self._ui = ui
        self._tls = tls
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None
        self.url = ""

    async def start(self) -> str:
        family, kind, proto, _, address = socket.getaddrinfo(
            self._ui.host, self._ui.port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            sock.close()
            raise OSError(f"LATENTGUARD_UI__PORT: cannot listen on {self._ui.host}:"
                          f"{self._ui.port} ({exc.strerror})") from None
        port = sock.getsockname()[1]
        tls = self._tls
        config = uvicorn.Config(
            self._app, log_level="warning", access_log=False, lifespan="off",
            server_header=False, proxy_headers=False, timeout_graceful_shutdown=1,
            ssl_certfile=str(tls.cert_file) if tls.cert_file else None,
            ssl_keyfile=str(tls.key_file) if tls.key_file else None)
        self._server = server = _Server(config)
        self._task = asyncio.create_task(server.serve(sockets=[sock]), name="console")
        while not server.started:
            if self._task.done():
                self._task.result()  # raises what stopped it
                raise RuntimeError("the console stopped while starting")
            await asyncio.sleep(0.02)
        host = f"[{self._ui.host}]" if ":" in self._ui.host else self._ui.host
        self.url = f"{'https' if tls.enabled else 'http'}://{host}:{port}"
        log.info("review console on %s", self.url)
        return self.url

    async def stop(self) -> None:
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        try:
            await asyncio.wait_for(self._task, 10)
        except TimeoutError:
            log.warning("the console did not stop within 10 s")
            self._task.cancel()
        self._server = self._task = None
