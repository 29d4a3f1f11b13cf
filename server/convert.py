"""The sidecar's own types at the gRPC edge: a StepBatch -> a `Step`; records (traces, tokens,
reviews, alerts) -> wire types.

Rules, policies, steering, hits and verdicts convert in `latentguard.wire`, shared with the
plugin.
"""

from __future__ import annotations

import torch

from latentguard import wire
from latentguard.server.errors import InvalidArgument, check_length
from latentguard.server.records import AlertRecord, ReviewRecord, TokenRecord, TraceRecord
from latentguard.server.step import RequestClose, RequestOpen, Span, Step
from latentguard.v1 import common_pb2, monitor_pb2, traces_pb2


def token_proto(t: TokenRecord, labels: dict[int, str] | None = None,
                top_k: int | None = None) -> common_pb2.TokenRecord:
    labels = labels or {}
    return common_pb2.TokenRecord(
        position=t.position, token_id=t.token_id, text=t.text, prompt=t.prompt,
        top_features=[common_pb2.FeatureActivation(feature=f.feature, value=f.value,
                                                   label=labels.get(f.feature, ""))
                      for f in t.top_features[:top_k]],
    )


def review_proto(r: ReviewRecord) -> traces_pb2.Review:
    return traces_pb2.Review(label=wire.LABEL[r.label], reviewer=r.reviewer, note=r.note,
                             at=wire.to_timestamp(r.at))


def trace_proto(t: TraceRecord, labels: dict[int, str] | None = None) -> traces_pb2.Trace:
    return traces_pb2.Trace(
        id=t.id, request_tag=t.request_tag, model=t.model, policy=t.policy,
        started_at=wire.to_timestamp(t.started_at), ended_at=wire.to_timestamp(t.ended_at),
        status=wire.STATUS[t.status], max_severity=wire.SEVERITY.code(t.max_severity),
        rules_hit=t.rules_hit, finish_reason=t.finish_reason, blocked=t.blocked,
        blocked_by=t.blocked_by, prompt_tokens=t.prompt_tokens,
        completion_tokens=t.completion_tokens, otel_trace_id=t.otel_trace_id,
        otel_span_id=t.otel_span_id, monitoring_gap=t.monitoring_gap,
        prompt_text=t.prompt_text, completion_text=t.completion_text,
        tokens=[token_proto(tok, labels) for tok in t.tokens],
        hits=[wire.hit_proto(h) for h in t.hits], reviews=[review_proto(r) for r in t.reviews],
        tokens_dropped=t.tokens_dropped, hits_dropped=t.hits_dropped,
    )


def alert_proto(a: AlertRecord, consumer_group: str = "") -> traces_pb2.Alert:
    return traces_pb2.Alert(id=a.id, trace_id=a.trace_id, request_tag=a.request_tag,
                            model=a.model, policy=a.policy, hit=wire.hit_proto(a.hit),
                            consumer_group=consumer_group)


MAX_TAG = 256
MAX_POLICY = 128
MAX_STEP_TEXT = 1_000_000
"""Longest prompt or completion text a step may carry (the trace keeps it)."""


def step_model(msg: monitor_pb2.StepBatch, d_in: int, d_sae: int) -> Step:
    """The step in domain types; InvalidArgument / ShapeError name what is wrong. Checks
    what one message can show (shapes, lengths, row ranges); `StreamSession` checks the rest
    against the requests it knows."""
    rows = wire.rows_from_proto(msg.rows, d_in) if msg.spans else torch.empty(0, d_in)
    n_rows = rows.shape[0]
    opened = []
    for i, s in enumerate(msg.started):
        if not s.request_tag:
            raise InvalidArgument(f"started[{i}].request_tag: required",
                                  field=f"started[{i}].request_tag")
        check_length(s.request_tag, f"started[{i}].request_tag", MAX_TAG)
        check_length(s.policy, f"started[{i}].policy", MAX_POLICY)
        check_length(s.model, f"started[{i}].model", MAX_TAG)
        check_length(s.prompt_text, f"started[{i}].prompt_text", MAX_STEP_TEXT)
        steer = (wire.steer_model(s.steer, f"started[{i}].steer", d_sae)
                 if s.HasField("steer") else None)
        opened.append(RequestOpen(tag=s.request_tag, policy=s.policy, model=s.model,
                                  prompt_tokens=s.prompt_tokens, prompt_text=s.prompt_text,
                                  steer=steer))
    spans, covered = [], 0
    for i, span in enumerate(msg.spans):
        n = len(span.positions)
        check_length(span.request_tag, f"spans[{i}].request_tag", MAX_TAG)
        if n == 0:
            raise InvalidArgument(f"spans[{i}].positions: required (a span has at least one "
                                  "row)", field=f"spans[{i}].positions")
        if len(span.token_ids) != n:
            raise InvalidArgument(f"spans[{i}].token_ids: {len(span.token_ids)} ids for {n} "
                                  "positions", field=f"spans[{i}].token_ids")
        if span.row_start + n > n_rows:
            raise InvalidArgument(f"spans[{i}]: rows {span.row_start}..{span.row_start + n} "
                                  f"outside the {n_rows} rows sent", field=f"spans[{i}]")
        covered += n
        spans.append(Span(tag=span.request_tag, row_start=span.row_start,
                          positions=list(span.positions), token_ids=list(span.token_ids),
                          prefill=span.prefill))
    if covered > n_rows:
        raise InvalidArgument(f"spans: {covered} rows claimed, {n_rows} sent", field="spans")
    for i, e in enumerate(msg.finished):
        check_length(e.request_tag, f"finished[{i}].request_tag", MAX_TAG)
        check_length(e.finish_reason, f"finished[{i}].finish_reason", MAX_POLICY)
        check_length(e.completion_text, f"finished[{i}].completion_text", MAX_STEP_TEXT)
    closed = [RequestClose(tag=e.request_tag, finish_reason=e.finish_reason,
                           completion_tokens=e.completion_tokens,
                           completion_text=e.completion_text, monitoring_gap=e.monitoring_gap)
              for e in msg.finished]
    return Step(number=msg.step, rows=rows, opened=opened, spans=spans, closed=closed)
