"""The Monitor service: the engine-facing stream, and Inspect / Generate.

Inspect and Generate need a model attached through the vLLM plugin; until one is, they answer
UNAVAILABLE with the reason.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import grpc
from google.protobuf.message import DecodeError

from latentguard import __version__
from latentguard.server.errors import ServerError, Unavailable, grpc_errors, status_for
from latentguard.server.runtime import MonitorRuntime
from latentguard.server.session import StreamSession
from latentguard.v1 import monitor_pb2, monitor_pb2_grpc

log = logging.getLogger(__name__)

NO_MODEL = ("no model is attached to this sidecar: start it with `latentguard vllm` "
            "(vLLM with the latentguard plugin) to use Inspect and Generate")


class MonitorService(monitor_pb2_grpc.MonitorServicer):
    def __init__(self, runtime: MonitorRuntime) -> None:
        self._runtime = runtime

    def _ready(self, hello: monitor_pb2.Hello) -> monitor_pb2.MonitorReply:
        sae = self._runtime.sae
        if sae is None:
            raise ServerError("no SAE loaded: set LATENTGUARD_SAE_PATH")
        if hello.d_model and hello.d_model != sae.d_in:
            raise ServerError(f"hello.d_model: {hello.d_model} does not match the SAE's d_in "
                              f"{sae.d_in}", field="hello.d_model")
        if hello.hook_name and sae.hook_name and hello.hook_name != sae.hook_name:
            raise ServerError(f"hello.hook_name: {hello.hook_name!r} but the SAE reads "
                              f"{sae.hook_name!r}", field="hello.hook_name")
        return monitor_pb2.MonitorReply(ready=monitor_pb2.Ready(
            sae_hook_name=sae.hook_name, layer=max(sae.layer, 0), d_model=sae.d_in,
            d_sae=sae.d_sae, server_version=__version__,
            policies=self._runtime.policy_protos(),
            default_policy=self._runtime.settings.default_policy,
            policy_revision=self._runtime.revision))

    async def Stream(self, raw: AsyncIterator[monitor_pb2.MonitorMessage],
                     context: grpc.aio.ServicerContext
                     ) -> AsyncIterator[monitor_pb2.MonitorReply]:
        requests = _decoded(raw, context)
        first = await anext(requests, None)
        if first is None:
            return
        if first.WhichOneof("kind") != "hello":
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                "the first message of a Monitor stream must be hello")
        try:
            yield self._ready(first.hello)
        except ServerError as exc:
            code = (grpc.StatusCode.INVALID_ARGUMENT if exc.field
                    else grpc.StatusCode.FAILED_PRECONDITION)
            await context.abort(code, str(exc))
        session = StreamSession(self._runtime, self._runtime.writer, first.hello.client)
        policy_revision = self._runtime.revision
        try:
            async for message in requests:
                if message.WhichOneof("kind") != "step":
                    yield _batch_error(0, grpc.StatusCode.INVALID_ARGUMENT, "kind",
                                       "expected a step (hello only once, first)")
                    continue
                try:
                    verdicts = await session.handle(message.step)
                    if self._runtime.revision != policy_revision:
                        policy_revision = self._runtime.revision
                        verdicts.policies.extend(self._runtime.policy_protos())
                        verdicts.policy_revision = policy_revision
                    yield monitor_pb2.MonitorReply(verdicts=verdicts)
                except Exception as exc:
                    code, text, violations = status_for(exc)
                    if code == grpc.StatusCode.INTERNAL:
                        log.exception("step %d failed", message.step.step)
                    self._runtime.telemetry.batch_errors.add(1, {"code": code.name})
                    yield _batch_error(message.step.step, code,
                                       violations[0][0] if violations else "", text)
        finally:
            await session.close()

    @grpc_errors
    async def Inspect(self, request: monitor_pb2.InspectRequest,
                      context: grpc.aio.ServicerContext) -> monitor_pb2.InspectResponse:
        raise Unavailable(NO_MODEL)

    @grpc_errors
    async def Generate(self, request: monitor_pb2.GenerateRequest,
                       context: grpc.aio.ServicerContext
                       ) -> AsyncIterator[monitor_pb2.GenerateEvent]:
        raise Unavailable(NO_MODEL)
        yield  # pragma: no cover - makes this a server-streaming handler


async def _decoded(raw: AsyncIterator[monitor_pb2.MonitorMessage],
                   context: grpc.aio.ServicerContext
                   ) -> AsyncIterator[monitor_pb2.MonitorMessage]:
    """The stream's messages; undecodable bytes end the stream with INVALID_ARGUMENT."""
    try:
        async for message in raw:
            yield message
    except DecodeError as exc:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                             f"message is not a latentguard.v1.MonitorMessage: {exc}")


def _batch_error(step: int, code: grpc.StatusCode, field: str,
                 message: str) -> monitor_pb2.MonitorReply:
    return monitor_pb2.MonitorReply(error=monitor_pb2.BatchError(
        step=step, code=code.name, field=field, message=message))
