"""The Monitor service: the engine-facing stream, and Inspect / Generate.

Inspect and Generate need a model attached through the vLLM plugin; until one is, they answer
UNAVAILABLE with the reason.
"""

from __future__ import annotations

import asyncio
import logging
import math
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from latentguard import __version__, wire
from latentguard.server import convert
from latentguard.server.errors import (
    FailedPrecondition,
    InvalidArgument,
    ServerError,
    Unavailable,
    grpc_errors,
    quoted,
    status_for,
)
from latentguard.server.events import (
    Event,
    HitFound,
    HttpDone,
    RequestEnded,
    TextChunk,
    TokensSeen,
    VerdictGiven,
    Watcher,
    Watchers,
)
from latentguard.server.openai_client import OpenAIClient
from latentguard.server.runtime import MonitorRuntime
from latentguard.server.stream import StreamSession
from latentguard.server.tokens import TokenTexts
from latentguard.server.writer import TraceWriter
from latentguard.v1 import monitor_pb2, monitor_pb2_grpc

log = logging.getLogger(__name__)

MAX_TEXT = 100_000
MAX_TOKENS = 4096
#: How long Generate/Inspect wait, after vLLM is done, for the plugin to report the end.
END_WAIT_S = 10.0
#: How long Generate/Inspect wait for their trace to be in the store before they hand out its id
#: (while the store is away it waits on disk, and the caller gets the id anyway).
STORED_WAIT_S = 5.0

NO_MODEL = ("no model is attached to this sidecar: start it with `latentguard vllm` "
            "(vLLM with the latentguard plugin) to use Inspect and Generate")


class MonitorService(monitor_pb2_grpc.MonitorServicer):
    def __init__(self, runtime: MonitorRuntime, writer: TraceWriter, watchers: Watchers,
                 token_texts: TokenTexts | None = None) -> None:
        self._runtime = runtime
        self._writer = writer
        self._watchers = watchers
        self._token_texts = token_texts or TokenTexts()
        self._openai: OpenAIClient | None = None

    def _policy_protos(self) -> list[Any]:
        return [wire.policy_proto(p) for p in self._runtime.all_policies()]

    def _ready(self, hello: monitor_pb2.Hello) -> monitor_pb2.MonitorReply:
        sae = self._runtime.sae
        if sae is None:
            raise ServerError("no SAE loaded: set LATENTGUARD_SAE_PATH")
        if hello.d_model and hello.d_model != sae.d_in:
            raise ServerError(f"hello.d_model: {hello.d_model} does not match the SAE's d_in "
                              f"{sae.d_in}", field="hello.d_model")
        if hello.hook_name and sae.hook_name and hello.hook_name != sae.hook_name:
            raise ServerError(f"hello.hook_name: {quoted(hello.hook_name)} but the SAE reads "
                              f"{sae.hook_name!r}", field="hello.hook_name")
        return monitor_pb2.MonitorReply(ready=monitor_pb2.Ready(
            sae_hook_name=sae.hook_name, layer=max(sae.layer, 0), d_model=sae.d_in,
            d_sae=sae.d_sae, server_version=__version__,
            policies=self._policy_protos(),
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
        if first.hello.model:
            # Loading a tokenizer takes seconds for a real model: before Ready, so the first
            # step (maybe a sync one, with a 200 ms budget) does not pay for it.
            await asyncio.to_thread(self._token_texts.for_model, first.hello.model)
        try:
            yield self._ready(first.hello)
        except ServerError as exc:
            code = (grpc.StatusCode.INVALID_ARGUMENT if exc.field
                    else grpc.StatusCode.FAILED_PRECONDITION)
            await context.abort(code, str(exc))
        session = StreamSession(self._runtime, self._writer, self._watchers, self._token_texts,
                                first.hello.client)
        policy_revision = self._runtime.revision
        try:
            async for message in requests:
                if message.WhichOneof("kind") != "step":
                    yield _batch_error(0, grpc.StatusCode.INVALID_ARGUMENT, "kind",
                                       "expected a step (hello only once, first)")
                    continue
                try:
                    sae = self._runtime.sae
                    if sae is None:
                        raise FailedPrecondition("no SAE loaded: set LATENTGUARD_SAE_PATH")
                    step = convert.step_model(message.step, sae.d_in, sae.d_sae)
                    verdicts = monitor_pb2.StepVerdicts(
                        step=step.number,
                        verdicts=[wire.verdict_proto(v) for v in await session.handle(step)])
                    if self._runtime.revision != policy_revision:
                        policy_revision = self._runtime.revision
                        verdicts.policies.extend(self._policy_protos())
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
            await session.close_all()

    def _client(self) -> OpenAIClient:
        settings = self._runtime.settings
        if not settings.vllm_url:
            raise Unavailable(NO_MODEL)
        if self._openai is None:
            self._openai = OpenAIClient(settings.vllm_url, settings.model_name)
        return self._openai

    async def _pump(self, watcher: Watcher, **kwargs: Any) -> None:
        """Feeds vLLM's streamed chunks into the watcher, then HttpDone."""
        error: Exception | None = None
        try:
            async for chunk in self._client().stream(**kwargs):
                for choice in chunk.get("choices", []):
                    text = choice.get("text")
                    if text is None:
                        text = (choice.get("delta") or {}).get("content") or ""
                    watcher.put_nowait(TextChunk(text, choice.get("finish_reason") or ""))
        except Exception as exc:
            error = exc
        watcher.put_nowait(HttpDone(error))

    async def _events(self, tag: str, watcher: Watcher, **kwargs: Any
                      ) -> AsyncIterator[Event]:
        """Everything that happens to one request, until its trace is written."""
        pump = asyncio.create_task(self._pump(watcher, **kwargs))
        http_done = ended = False
        try:
            while not (http_done and ended):
                try:
                    event = await asyncio.wait_for(
                        watcher.get(), END_WAIT_S if http_done else None)
                except TimeoutError:
                    log.warning("request %s: the sidecar saw no end of it within %s s", tag,
                                END_WAIT_S)
                    return
                if isinstance(event, HttpDone):
                    http_done = True
                    if event.error is not None:
                        raise event.error
                elif isinstance(event, RequestEnded):
                    ended = True
                yield event
        finally:
            pump.cancel()
            self._watchers.unwatch(tag)

    @grpc_errors
    async def Inspect(self, request: monitor_pb2.InspectRequest,
                      context: grpc.aio.ServicerContext) -> monitor_pb2.InspectResponse:
        self._client()
        if not request.text:
            raise InvalidArgument("text: required", field="text")
        if len(request.text) > MAX_TEXT:
            raise InvalidArgument(f"text: at most {MAX_TEXT} characters", field="text")
        top_k = _top_k(request.top_k)
        sae = self._runtime.sae
        for i, f in enumerate(request.features):
            if sae is not None and f >= sae.d_sae:
                raise InvalidArgument(f"features[{i}]: {f} out of range (d_sae {sae.d_sae})",
                                      field=f"features[{i}]")
        tag = f"lg-inspect-{uuid.uuid4().hex[:16]}"
        watcher = self._watchers.watch(tag, list(request.features))
        xargs = {"latentguard_tag": tag}
        if request.policy:
            xargs["latentguard_policy"] = request.policy
        labels = self._runtime.labels()
        resp = monitor_pb2.InspectResponse()
        series: dict[int, list[float]] = {f: [] for f in request.features}
        async for event in self._events(tag, watcher, prompt=request.text, xargs=xargs,
                                        max_tokens=1, temperature=0.0):
            match event:
                case TokensSeen(records, seen):
                    resp.tokens.extend(convert.token_proto(r, labels, top_k)
                                       for r in records if r.prompt)
                    for f, values in seen.items():
                        series[f].extend(values)
                case HitFound(hit):
                    resp.hits.append(wire.hit_proto(hit))
                case RequestEnded(trace) if trace is not None:
                    resp.trace_id = trace.id
        resp.series.extend(monitor_pb2.FeatureSeries(feature=f, values=v)
                           for f, v in series.items())
        if resp.trace_id:
            await self._writer.stored(resp.trace_id, STORED_WAIT_S)
        return resp

    @grpc_errors
    async def Generate(self, request: monitor_pb2.GenerateRequest,
                       context: grpc.aio.ServicerContext
                       ) -> AsyncIterator[monitor_pb2.GenerateEvent]:
        self._client()
        kind = request.WhichOneof("input")
        if kind is None:
            raise InvalidArgument("input: set prompt or chat", field="input")
        if request.max_tokens > MAX_TOKENS:
            raise InvalidArgument(f"max_tokens: at most {MAX_TOKENS}", field="max_tokens")
        if not math.isfinite(request.temperature) or not 0 <= request.temperature <= 100:
            raise InvalidArgument("temperature: a number from 0 to 100", field="temperature")
        if request.policy and len(request.policy) > 128:
            raise InvalidArgument("policy: at most 128 characters", field="policy")
        if kind == "prompt" and len(request.prompt) > MAX_TEXT:
            raise InvalidArgument(f"prompt: at most {MAX_TEXT} characters", field="prompt")
        top_k = _top_k(request.top_k)
        tag = f"lg-gen-{uuid.uuid4().hex[:16]}"
        xargs: dict[str, Any] = {"latentguard_tag": tag}
        if request.policy:
            xargs["latentguard_policy"] = request.policy
        if request.HasField("steer"):
            d_sae = self._runtime.sae.d_sae if self._runtime.sae is not None else None
            xargs["latentguard_steer"] = wire.steer_model(
                request.steer, "steer", d_sae).model_dump_json()
        params: dict[str, Any] = {"max_tokens": request.max_tokens or 64,
                                  "temperature": request.temperature}
        if request.seed:
            params["seed"] = request.seed
        if kind == "prompt":
            params["prompt"] = request.prompt
        else:
            params["messages"] = [{"role": m.role, "content": m.content}
                                  for m in request.chat.messages]
        watcher = self._watchers.watch(tag)
        labels = self._runtime.labels()
        index, finish, blocked_by, trace_id = 0, "", "", ""
        async for event in self._events(tag, watcher, xargs=xargs, **params):
            match event:
                case TextChunk(text, finish_reason):
                    if text:
                        yield monitor_pb2.GenerateEvent(
                            token=monitor_pb2.GeneratedToken(index=index, text=text))
                        index += 1
                    finish = finish_reason or finish
                case TokensSeen(records):
                    for record in records:
                        yield monitor_pb2.GenerateEvent(
                            features=convert.token_proto(record, labels, top_k))
                case HitFound(hit):
                    yield monitor_pb2.GenerateEvent(hit=wire.hit_proto(hit))
                case VerdictGiven(verdict):
                    if verdict.kind == "block":
                        blocked_by = blocked_by or verdict.rule
                    yield monitor_pb2.GenerateEvent(verdict=wire.verdict_proto(verdict))
                case RequestEnded(trace) if trace is not None:
                    trace_id = trace.id
                    blocked_by = blocked_by or trace.blocked_by
        if trace_id:
            await self._writer.stored(trace_id, STORED_WAIT_S)
        yield monitor_pb2.GenerateEvent(finish=monitor_pb2.Finish(
            reason="blocked" if blocked_by else (finish or "stop"), blocked_by=blocked_by,
            trace_id=trace_id))


def _top_k(value: int) -> int:
    if value > 64:
        raise InvalidArgument("top_k: at most 64", field="top_k")
    return value or 8


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
