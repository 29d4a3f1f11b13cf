"""The sidecar process: store, telemetry, the monitor runtime and the gRPC server, wired."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from latentguard.server.auth import Authenticator, AuthInterceptor
from latentguard.server.config import Settings
from latentguard.server.decoding import DecodeInterceptor
from latentguard.server.events import Watchers
from latentguard.server.packs import apply_rules_file
from latentguard.server.runtime import MonitorRuntime, sae_rules_file
from latentguard.server.services.features import FeaturesService
from latentguard.server.services.monitor import MonitorService
from latentguard.server.services.rules import RulesService
from latentguard.server.services.traces import TracesService
from latentguard.server.store import Store
from latentguard.server.store.private import private_dir
from latentguard.server.telemetry import Telemetry, setup_telemetry
from latentguard.server.tokens import TokenTexts
from latentguard.server.writer import TraceWriter
from latentguard.v1 import (
    features_pb2,
    features_pb2_grpc,
    monitor_pb2,
    monitor_pb2_grpc,
    rules_pb2,
    rules_pb2_grpc,
    traces_pb2,
    traces_pb2_grpc,
)

if TYPE_CHECKING:  # the console (Starlette, uvicorn) is imported only when it is served
    from latentguard.server.console import ConsoleServer

log = logging.getLogger(__name__)

SERVICE_NAMES = tuple(
    m.DESCRIPTOR.services_by_name[name].full_name
    for m, name in (
        (monitor_pb2, "Monitor"), (rules_pb2, "Rules"), (traces_pb2, "Traces"),
        (features_pb2, "Features"),
    )
)


def _server_credentials(settings: Settings) -> grpc.ServerCredentials:
    tls = settings.tls
    assert tls.cert_file is not None and tls.key_file is not None
    key, cert = Path(tls.key_file).read_bytes(), Path(tls.cert_file).read_bytes()
    ca = Path(tls.client_ca_file).read_bytes() if tls.client_ca_file else None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
    )


class Sidecar:
    """One sidecar: `await start()`, then `await wait()` or `await stop()`."""

    def __init__(self, settings: Settings, telemetry: Telemetry | None = None) -> None:
        self.settings = settings
        self.telemetry = telemetry or setup_telemetry()
        self.auth = Authenticator(settings.auth.tokens)
        self.store: Store | None = None
        self.runtime: MonitorRuntime | None = None
        self.writer: TraceWriter | None = None
        self.watchers = Watchers()
        """Requests someone waits on (Generate, Inspect), and row taps for tests and tools."""
        self.token_texts = TokenTexts()
        self.server: grpc.aio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.address = ""
        self.console: ConsoleServer | None = None
        """The review console, when `ui.enabled` (its address: `console.url`)."""

    async def start(self) -> Sidecar:
        s = self.settings
        private_dir(s.data_dir, root_owned_ok=True)
        url = s.redis_url.get_secret_value() if s.redis_url else None
        self.store = await Store.open(
            url, s.data_dir, prefix=s.redis_prefix,
            retention=timedelta(days=s.trace_retention_days), alert_maxlen=s.alert_stream_maxlen,
        )
        self.runtime = runtime = MonitorRuntime(s, self.store, self.telemetry)
        await runtime.load_sae()
        rules_file = s.rules_file or sae_rules_file(s.sae_path)
        if rules_file is not None:  # bound to the SAE just loaded
            await apply_rules_file(self.store, Path(rules_file), runtime.sae_identity,
                                   replace_stale=s.replace_stale_rules)
        await runtime.reload()
        await asyncio.to_thread(runtime.warm_up)
        self.writer = TraceWriter(self.store, s.data_dir, spool_max_bytes=s.spool_max_mb << 20,
                                  drain_s=s.stop_drain_s).start()
        self._tasks.append(asyncio.create_task(self.store.watch_changes(self.runtime.on_change)))

        max_bytes = s.max_message_mb * 1024 * 1024
        server = grpc.aio.server(
            interceptors=[AuthInterceptor(self.auth), DecodeInterceptor()],
            options=[
                ("grpc.max_receive_message_length", max_bytes),
                ("grpc.max_send_message_length", max_bytes),
                ("grpc.so_reuseport", 0),
            ],
        )
        rules_pb2_grpc.add_RulesServicer_to_server(
            RulesService(self.store, self.auth, self.runtime), server)
        traces_pb2_grpc.add_TracesServicer_to_server(
            TracesService(self.store, self.auth, self.runtime.labels,
                          claim_idle_ms=int(s.alert_claim_idle_s * 1000)), server)
        features_pb2_grpc.add_FeaturesServicer_to_server(FeaturesService(self.runtime), server)
        monitor_pb2_grpc.add_MonitorServicer_to_server(
            MonitorService(self.runtime, self.writer, self.watchers, self.token_texts), server)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
        self.address = self._bind(server)
        await server.start()
        if s.is_unix:
            # The socket is created with the process umask: only its owner may connect.
            os.chmod(s.socket_path, 0o600)
        for name in ("", *SERVICE_NAMES):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        self.server = server
        self._health = health_servicer
        if s.ui.enabled:
            await self._start_console()
        log.info("latentguard serving on %s (store: %s, SAE: %s, auth: %s)", self.address,
                 "embedded" if url is None else "external",
                 s.sae_path or "none", "on" if self.auth.enabled else "off")
        return self

    async def _start_console(self) -> None:
        from latentguard.server.console import ConsoleAuth, ConsoleDeps, ConsoleServer, create_app

        assert self.store is not None and self.runtime is not None
        runtime, s = self.runtime, self.settings
        deps = ConsoleDeps(store=self.store,
                           auth=ConsoleAuth(self.auth, s.ui.session_hours * 3600),
                           catalog=lambda: runtime.catalog, settings=s.ui,
                           secure_cookies=s.tls.enabled)
        self.console = ConsoleServer(create_app(deps), s.ui, s.tls)
        await self.console.start()

    def _bind(self, server: grpc.aio.Server) -> str:
        s = self.settings
        if s.is_unix:
            path = s.socket_path
            if not path.parent.exists():
                private_dir(path.parent)
            if path.exists():
                path.unlink()
            server.add_insecure_port(s.listen)
            return s.listen
        if s.tls.enabled:
            port = server.add_secure_port(s.listen, _server_credentials(s))
        else:
            if not self.auth.enabled:
                log.warning("listening on TCP %s without TLS or tokens: anyone who can reach "
                            "the port can read traces and change rules", s.listen)
            else:
                log.warning("listening on TCP %s without TLS: bearer tokens travel in plain "
                            "text (set LATENTGUARD_TLS__CERT_FILE and LATENTGUARD_TLS__KEY_FILE)",
                            s.listen)
            port = server.add_insecure_port(s.listen)
        host = s.listen.rsplit(":", 1)[0]
        return f"{host}:{port}"

    async def stop(self, grace: float = 5.0) -> None:
        if self.console is not None:
            await self.console.stop()
            self.console = None
        if self.server is not None:
            await self._health.enter_graceful_shutdown()
            await self.server.stop(grace)
            self.server = None
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            _, stuck = await asyncio.wait(self._tasks, timeout=5)
            for task in stuck:
                log.warning("background task %s did not stop within 5 s", task.get_name())
        self._tasks.clear()
        if self.writer is not None:
            await self.writer.close()
            self.writer = None
        if self.runtime is not None:
            await self.runtime.close()
        if self.store is not None:
            await self.store.close()
            self.store = None
        if self.settings.is_unix and self.settings.socket_path.exists():
            self.settings.socket_path.unlink()
        self.telemetry.shutdown()

    async def wait(self) -> None:
        assert self.server is not None
        await self.server.wait_for_termination()


async def serve(settings: Settings) -> None:
    """Runs until SIGINT/SIGTERM, then stops gracefully (the store flushes its AOF)."""
    sidecar = await Sidecar(settings).start()
    # What start-up made (torch, the SAE, the model's modules, gRPC) lives as long as the
    # process: out of the collector's reach, a full collection no longer walks it, which cut
    # the worst Monitor step while a big rule pack was checked by about half.
    gc.freeze()
    # A thread compiling thousands of rules (or any CPU work off the loop) keeps the GIL for up
    # to the switch interval each time the loop or a step's worker asks for it back; at the
    # default 5 ms the few hand-offs of one Monitor step added up to ~70 ms.
    sys.setswitchinterval(0.0005)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    pid_file = settings.data_dir / "latentguard.pid"
    pid_file.write_text(f"{os.getpid()}\n")
    print(f"latentguard {os.getpid()} serving on {sidecar.address}", flush=True)
    if sidecar.console is not None:
        print(f"review console on {sidecar.console.url}", flush=True)
    try:
        await stop.wait()
        log.info("stopping")
        await sidecar.stop()
    finally:
        pid_file.unlink(missing_ok=True)
