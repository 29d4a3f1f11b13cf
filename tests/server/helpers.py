"""A sidecar running on its own event loop in a thread, so tests can use blocking clients
(the CLI, sync gRPC stubs) against it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from latentguard.server.app import Sidecar
from latentguard.server.config import Settings
from latentguard.server.telemetry import Telemetry, setup_telemetry
from latentguard.v1 import common_pb2, rules_pb2


class RunningSidecar:
    def __init__(self, sidecar: Sidecar, loop: asyncio.AbstractEventLoop,
                 spans: InMemorySpanExporter, metrics: InMemoryMetricReader) -> None:
        self.sidecar = sidecar
        self.loop = loop
        self.spans = spans
        self.metrics = metrics

    @property
    def target(self) -> str:
        return self.sidecar.address

    def run(self, coro: Any, timeout: float = 30) -> Any:
        """Runs a coroutine on the sidecar's loop (e.g. a store call) and returns its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.target)

    def metric_points(self, name: str) -> list[Any]:
        data = self.metrics.get_metrics_data()
        points = []
        for rm in data.resource_metrics if data else []:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    if m.name == name:
                        points.extend(m.data.data_points)
        return points


def make_telemetry() -> tuple[Telemetry, InMemorySpanExporter, InMemoryMetricReader]:
    spans, metrics = InMemorySpanExporter(), InMemoryMetricReader()
    telemetry = setup_telemetry(span_processors=[SimpleSpanProcessor(spans)],
                                metric_readers=[metrics])
    return telemetry, spans, metrics


@contextmanager
def running_sidecar(data_dir: Path, **settings: Any) -> Iterator[RunningSidecar]:
    settings.setdefault("listen", f"unix://{data_dir / 'lg.sock'}")
    # Only what the test asks for: no LATENTGUARD_* variable of the test process leaks in.
    for name in ("sae_path", "rules_file", "redis_url"):
        settings.setdefault(name, None)
    cfg = Settings(data_dir=data_dir, **settings)
    telemetry, spans, metrics = make_telemetry()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    sidecar = Sidecar(cfg, telemetry)
    try:
        asyncio.run_coroutine_threadsafe(sidecar.start(), loop).result(60)
        yield RunningSidecar(sidecar, loop, spans, metrics)
    finally:
        asyncio.run_coroutine_threadsafe(sidecar.stop(grace=1), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def signal_rule(name: str, feature: int = 3, threshold: float = 1.0) -> rules_pb2.Rule:
    return rules_pb2.Rule(
        name=name, severity=common_pb2.SEVERITY_HIGH,
        when=rules_pb2.Condition(signal=rules_pb2.Signal(feature=feature, threshold=threshold)),
        action=rules_pb2.Action(type=common_pb2.ACTION_TYPE_ALERT),
    )


def violations(err: grpc.RpcError) -> list[tuple[str, str]]:
    """The google.rpc.BadRequest field violations a failed call carries."""
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    status = rpc_status.from_call(err)  # type: ignore[arg-type]  # a failed call is a Call
    out = []
    for detail in status.details if status is not None else []:
        bad = error_details_pb2.BadRequest()
        detail.Unpack(bad)
        out += [(v.field, v.description) for v in bad.field_violations]
    return out
