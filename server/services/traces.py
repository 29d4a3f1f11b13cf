"""The Traces service: list, get, review, and the live alert stream."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import datetime

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from latentguard import wire
from latentguard.monitors.rules import severity_rank
from latentguard.server import convert
from latentguard.server.auth import Authenticator
from latentguard.server.errors import (
    InvalidArgument,
    PermissionDenied,
    check_length,
    grpc_errors,
    quoted,
)
from latentguard.server.records import AlertRecord, ReviewRecord, TraceFilter
from latentguard.server.store import Store
from latentguard.server.store.alerts import CLAIM_IDLE_MS, group_for
from latentguard.v1 import traces_pb2, traces_pb2_grpc

MAX_NOTE = 10_000
MAX_NAME = 256
"""Longest reviewer, rule, consumer group or consumer name accepted."""
MAX_TOKEN = 64


def _time(request: traces_pb2.ListTracesRequest, field: str) -> datetime | None:
    """The timestamp in ``field``, or None when unset; one past what datetime holds (years
    1..9999) is the caller's mistake, not the server's."""
    if not request.HasField(field):
        return None
    ts: Timestamp = getattr(request, field)
    try:
        return wire.from_timestamp(ts)
    except (ValueError, OverflowError, OSError):
        raise InvalidArgument(f"{field}: {ts.seconds} s is outside years 1..9999",
                              field=field) from None


class TracesService(traces_pb2_grpc.TracesServicer):
    def __init__(self, store: Store, auth: Authenticator,
                 labels: Callable[[], dict[int, str]] = dict,
                 claim_idle_ms: int = CLAIM_IDLE_MS) -> None:
        self._store = store
        self._auth = auth
        self._labels = labels
        self._claim_idle_ms = claim_idle_ms

    @grpc_errors
    async def ListTraces(self, request: traces_pb2.ListTracesRequest,
                         context: grpc.aio.ServicerContext) -> traces_pb2.ListTracesResponse:
        status = None
        if request.status:
            status = wire.STATUS.name(request.status)
            if status is None or status.startswith("<"):
                raise InvalidArgument(f"status: unknown value {request.status}", field="status")
        if request.page_size > 1000:
            raise InvalidArgument("page_size: at most 1000", field="page_size")
        check_length(request.rule, "rule", MAX_NAME)
        check_length(request.page_token, "page_token", MAX_TOKEN)
        flt = TraceFilter.model_validate({
            "start": _time(request, "start_time"), "end": _time(request, "end_time"),
            "rule": request.rule, "min_severity": wire.SEVERITY.name(request.min_severity) or "",
            "status": status, "page_size": request.page_size or 50,
            "page_token": request.page_token,
        })
        if flt.start and flt.end and flt.start >= flt.end:
            raise InvalidArgument("start_time: must be before end_time", field="start_time")
        page, token = await self._store.traces.list(flt)
        return traces_pb2.ListTracesResponse(
            traces=[convert.trace_proto(t) for t in page], next_page_token=token)

    @grpc_errors
    async def GetTrace(self, request: traces_pb2.GetTraceRequest,
                       context: grpc.aio.ServicerContext) -> traces_pb2.Trace:
        _check_id(request.id)
        return convert.trace_proto(await self._store.traces.get(request.id), self._labels())

    @grpc_errors
    async def ReviewTrace(self, request: traces_pb2.ReviewTraceRequest,
                          context: grpc.aio.ServicerContext) -> traces_pb2.Trace:
        _check_id(request.id)
        label = wire.LABEL.name(request.label)
        if label is None or label.startswith("<"):
            raise InvalidArgument("label: one of TRUE_POSITIVE, FALSE_POSITIVE, ESCALATE",
                                  field="label")
        if len(request.note) > MAX_NOTE:
            raise InvalidArgument(f"note: at most {MAX_NOTE} characters", field="note")
        check_length(request.reviewer, "reviewer", MAX_NAME)
        record = ReviewRecord.model_validate(
            {"label": label, "reviewer": self._reviewer(request, context), "note": request.note})
        return convert.trace_proto(await self._store.traces.review(request.id, record),
                                   self._labels())

    def _reviewer(self, request: traces_pb2.ReviewTraceRequest,
                  context: grpc.aio.ServicerContext) -> str:
        """Whom a review is filed under. With tokens, the token's name: a request naming
        someone else is refused, so no token files reviews as another reviewer. Without
        tokens (the owner's unix socket), the request's name, which is then required."""
        if not self._auth.enabled:
            if not request.reviewer:
                raise InvalidArgument("reviewer: required when the sidecar has no tokens",
                                      field="reviewer")
            return request.reviewer
        caller = self._auth.caller_name(context)
        if request.reviewer and request.reviewer != caller:
            raise PermissionDenied(
                f"reviewer: {quoted(request.reviewer)} is not this token's name {caller!r}; "
                "a review is filed under the name of the token that sends it (leave reviewer "
                "empty)")
        return caller

    @grpc_errors
    async def StreamAlerts(self, request: traces_pb2.StreamAlertsRequest,
                           context: grpc.aio.ServicerContext) -> AsyncIterator[traces_pb2.Alert]:
        min_severity = wire.SEVERITY.name(request.min_severity) or "info"
        min_rank = severity_rank(min_severity)
        check_length(request.consumer_group, "consumer_group", MAX_NAME)
        check_length(request.consumer, "consumer", MAX_NAME)
        check_length(request.after_id, "after_id", MAX_TOKEN)
        for i, rule in enumerate(request.rules):
            check_length(rule, f"rules[{i}]", MAX_NAME)
        rules = set(request.rules)

        def wanted(alert: AlertRecord) -> bool:
            return (not rules or alert.hit.rule in rules) \
                and severity_rank(alert.hit.severity) >= min_rank

        group = ""
        if request.consumer_group:
            if request.after_id:
                raise InvalidArgument("after_id: not used with consumer_group", field="after_id")
            group = group_for(request.consumer_group, min_severity, list(rules))
            alerts = self._store.alerts.consume(group, request.consumer, wanted,
                                                self._claim_idle_ms)
        else:
            alerts = self._store.alerts.follow(request.after_id)
        try:
            async for alert in alerts:
                if group or wanted(alert):  # a group's reads are filtered by the store
                    yield convert.alert_proto(alert, consumer_group=group)
        finally:
            await alerts.aclose()  # type: ignore[attr-defined]  # an async generator

    @grpc_errors
    async def AckAlerts(self, request: traces_pb2.AckAlertsRequest,
                        context: grpc.aio.ServicerContext) -> traces_pb2.AckAlertsResponse:
        if not request.consumer_group:
            raise InvalidArgument("consumer_group: required (Alert.consumer_group)",
                                  field="consumer_group")
        check_length(request.consumer_group, "consumer_group", MAX_NAME)
        if len(request.ids) > 1000:
            raise InvalidArgument("ids: at most 1000 per call", field="ids")
        acked = await self._store.alerts.ack(request.consumer_group, list(request.ids))
        return traces_pb2.AckAlertsResponse(acked=acked)


def _check_id(trace_id: str) -> None:
    if len(trace_id) != 25 or any(c not in "0123456789abcdef" for c in trace_id):
        raise InvalidArgument(f"id: {quoted(trace_id)} is not a trace id (25 hex digits)",
                              field="id")
