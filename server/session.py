"""One Monitor stream: the requests it carries, their rule sessions, traces and verdicts.

`handle` takes one StepBatch: it checks it, encodes all rows with one SAE call (in a worker
thread, off the event loop), feeds each request's rows to its rule session, and returns the
step's verdicts. Traces are saved and alerts published after the verdicts are returned.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from latentguard.monitors.rules import Policy, Steer
from latentguard.server import convert
from latentguard.server.errors import FailedPrecondition, InvalidArgument
from latentguard.server.records import (
    AlertRecord,
    Evidence,
    FeatureValue,
    HitRecord,
    TokenRecord,
    TraceRecord,
    utcnow,
)
from latentguard.server.runtime import MonitorRuntime
from latentguard.server.writer import TraceWriter
from latentguard.v1 import common_pb2, monitor_pb2

log = logging.getLogger(__name__)

_NUMPY_DTYPES = {common_pb2.DTYPE_FLOAT32: np.float32, common_pb2.DTYPE_FLOAT16: np.float16}
MAX_OPEN_REQUESTS = 4096


@dataclass
class RequestState:
    trace: TraceRecord
    policy: Policy
    rules: Any  # the request's rule session; None when its policy turns monitoring off
    span: Any
    blocked_by: str = ""
    pending: list[monitor_pb2.Verdict] = field(default_factory=list)


def decode_rows(t: common_pb2.Tensor, d_model: int) -> torch.Tensor:
    """The step's rows as a float32 tensor [n, d_model]; InvalidArgument names what is wrong."""
    if len(t.shape) != 2:
        raise InvalidArgument(f"rows.shape: expected [rows, {d_model}], got {list(t.shape)}",
                              field="rows.shape")
    n, width = t.shape
    if width != d_model:
        raise InvalidArgument(f"rows.shape: width {width} does not match the SAE's d_in "
                              f"{d_model}", field="rows.shape")
    if t.dtype == common_pb2.DTYPE_BFLOAT16:
        itemsize = 2
    elif t.dtype in _NUMPY_DTYPES:
        itemsize = np.dtype(_NUMPY_DTYPES[t.dtype]).itemsize
    else:
        raise InvalidArgument(f"rows.dtype: unsupported value {t.dtype}", field="rows.dtype")
    if len(t.data) != n * width * itemsize:
        raise InvalidArgument(f"rows.data: {len(t.data)} bytes, expected {n * width * itemsize} "
                              f"for shape [{n}, {width}]", field="rows.data")
    if n == 0:
        return torch.empty(0, width)
    if t.dtype == common_pb2.DTYPE_BFLOAT16:
        raw = torch.frombuffer(bytearray(t.data), dtype=torch.int16).view(torch.bfloat16)
        rows = raw.reshape(n, width).float()
    else:
        rows = torch.from_numpy(np.frombuffer(t.data, dtype=_NUMPY_DTYPES[t.dtype])
                                .reshape(n, width).astype(np.float32))
    if not torch.isfinite(rows).all():
        raise InvalidArgument("rows.data: contains NaN or infinity", field="rows.data")
    return rows


class StreamSession:
    def __init__(self, runtime: MonitorRuntime, writer: TraceWriter, client: str = "") -> None:
        self.runtime = runtime
        self.writer = writer
        self.client = client
        self.requests: dict[str, RequestState] = {}

    # ---- checks -------------------------------------------------------------------------

    def _check(self, step: monitor_pb2.StepBatch, n_rows: int) -> None:
        new = [s.request_tag for s in step.started]
        for i, tag in enumerate(new):
            if not tag:
                raise InvalidArgument(f"started[{i}].request_tag: required",
                                      field=f"started[{i}].request_tag")
        if len(self.requests) + len(new) > MAX_OPEN_REQUESTS:
            raise InvalidArgument(f"started: more than {MAX_OPEN_REQUESTS} open requests",
                                  field="started")
        known = set(self.requests) | set(new)
        covered = 0
        for i, span in enumerate(step.spans):
            where = f"spans[{i}]"
            if span.request_tag not in known:
                raise InvalidArgument(f"{where}.request_tag: unknown request "
                                      f"{span.request_tag!r} (not started)",
                                      field=f"{where}.request_tag")
            n = len(span.positions)
            if len(span.token_ids) != n:
                raise InvalidArgument(f"{where}.token_ids: {len(span.token_ids)} ids for {n} "
                                      "positions", field=f"{where}.token_ids")
            if span.row_start + n > n_rows:
                raise InvalidArgument(f"{where}: rows {span.row_start}..{span.row_start + n} "
                                      f"outside the {n_rows} rows sent", field=f"{where}")
            covered += n
        if covered > n_rows:
            raise InvalidArgument(f"spans: {covered} rows claimed, {n_rows} sent", field="spans")
        for i, end in enumerate(step.finished):
            if end.request_tag not in known:
                raise InvalidArgument(f"finished[{i}].request_tag: unknown request "
                                      f"{end.request_tag!r}", field=f"finished[{i}].request_tag")

    # ---- the step -----------------------------------------------------------------------

    async def handle(self, step: monitor_pb2.StepBatch) -> monitor_pb2.StepVerdicts:
        start = time.perf_counter()
        sae = self.runtime.sae
        if sae is None:
            raise FailedPrecondition("no SAE loaded: set LATENTGUARD_SAE_PATH")
        rows = decode_rows(step.rows, sae.d_in) if step.spans else torch.empty(0, sae.d_in)
        self._check(step, rows.shape[0])
        starts = [
            (s, convert.steer_model(s.steer, f"started[{i}].steer", sae.d_sae)
             if s.HasField("steer") else None)
            for i, s in enumerate(step.started)]
        for s, steer in starts:
            self._open(s, steer)
        engine = self.runtime.engine
        hits, tokens, series = await asyncio.to_thread(self._evaluate, step, rows, engine)
        verdicts = []
        for tag in {s.request_tag for s in step.spans} | {s.request_tag for s in step.started}:
            state = self.requests.get(tag)
            if state is not None and state.pending:
                verdicts.extend(state.pending)
                state.pending = []
        for state, hit in hits:
            self.writer.publish(AlertRecord(
                trace_id=state.trace.id, request_tag=state.trace.request_tag,
                model=state.trace.model, policy=state.policy.name, hit=hit))
        self._notify(tokens, series, hits, verdicts)
        for end in step.finished:
            self._close(end)
        self.runtime.telemetry.tokens_monitored.add(int(rows.shape[0]))
        self.runtime.telemetry.verdict_latency.record(time.perf_counter() - start)
        return monitor_pb2.StepVerdicts(step=step.step, verdicts=verdicts)

    def _open(self, s: monitor_pb2.RequestStart, steer: Steer | None) -> None:
        if s.request_tag in self.requests:
            log.warning("request %s started twice; closing the first", s.request_tag)
            self._close(monitor_pb2.RequestEnd(request_tag=s.request_tag,
                                               finish_reason="restarted", monitoring_gap=True))
        policy = self.runtime.policy(s.policy)
        engine = self.runtime.engine
        model = s.model or self.runtime.settings.model_name
        span = self.runtime.telemetry.start_generation(
            model=model, request_tag=s.request_tag, policy=policy.name)
        ctx = span.get_span_context()
        trace = TraceRecord(
            request_tag=s.request_tag, model=model, policy=policy.name,
            prompt_tokens=s.prompt_tokens, prompt_text=s.prompt_text,
            otel_trace_id=f"{ctx.trace_id:032x}", otel_span_id=f"{ctx.span_id:016x}",
        )
        rules = engine.new_session(policy) if policy.monitoring and engine is not None else None
        state = RequestState(trace=trace, policy=policy, rules=rules, span=span)
        if steer is not None:
            state.pending.append(monitor_pb2.Verdict(
                request_tag=s.request_tag, kind=monitor_pb2.VERDICT_KIND_STEER,
                reason="steering requested by the request", steer=convert.steer_proto(steer)))
        self.requests[s.request_tag] = state

    def _notify(self, tokens: dict[str, list[TokenRecord]],
                series: dict[str, dict[int, list[float]]],
                hits: list[tuple[RequestState, HitRecord]],
                verdicts: list[monitor_pb2.Verdict]) -> None:
        """Passes what this step found to watchers of its requests (Generate, Inspect)."""
        watchers = self.runtime.watchers
        if not watchers:
            return
        for tag, records in tokens.items():
            if tag in watchers:
                watchers[tag].put_nowait(("tokens", records, series.get(tag, {})))
        for state, hit in hits:
            if state.trace.request_tag in watchers:
                watchers[state.trace.request_tag].put_nowait(("hit", hit))
        for v in verdicts:
            if v.request_tag in watchers:
                watchers[v.request_tag].put_nowait(("verdict", v))

    def _evaluate(
        self, step: monitor_pb2.StepBatch, rows: torch.Tensor, engine: Any
    ) -> tuple[list[tuple[RequestState, HitRecord]], dict[str, list[TokenRecord]],
               dict[str, dict[int, list[float]]]]:
        """CPU part of a step (runs in a worker thread): encode, record tokens, run rules."""
        if rows.shape[0] == 0:
            return [], {}, {}
        sae, probes = self.runtime.sae, self.runtime.probes
        idx = engine.signal_features if engine is not None else torch.empty(0, dtype=torch.long)
        enc = sae.encode_for_monitor(rows, idx, self.runtime.settings.top_k)
        probe_values = None
        if probes is not None and engine is not None:
            probe_values = probes.score(
                rows, enc.selected[:, engine.probe_feature_columns] if probes.reads_features
                else None)
        top_vals, top_idx = enc.topk_values.tolist(), enc.topk_indices.tolist()
        out: list[tuple[RequestState, HitRecord]] = []
        new_tokens: dict[str, list[TokenRecord]] = {}
        series: dict[str, dict[int, list[float]]] = {}
        for span in step.spans:
            state = self.requests[span.request_tag]
            if not state.policy.monitoring:
                continue
            lo, n = span.row_start, len(span.positions)
            text = self.runtime.token_decoder(state.trace.model)
            records = [
                TokenRecord(
                    position=pos, token_id=tok, prompt=span.prefill,
                    text=text(tok) if text is not None else "",
                    top_features=[FeatureValue(feature=f, value=v) for f, v in
                                  zip(top_idx[lo + r], top_vals[lo + r], strict=True) if v > 0])
                for r, (pos, tok) in enumerate(zip(span.positions, span.token_ids, strict=True))]
            state.trace.tokens.extend(records)
            for tap in self.runtime.taps:
                tap(span.request_tag, list(span.positions), list(span.token_ids),
                    rows[lo:lo + n].clone())
            new_tokens.setdefault(span.request_tag, []).extend(records)
            watcher = self.runtime.watchers.get(span.request_tag)
            if watcher is not None and watcher.features:
                values = sae.encode(rows[lo:lo + n])[:, watcher.features].T.tolist()
                per = series.setdefault(span.request_tag, {})
                for f, vals in zip(watcher.features, values, strict=True):
                    per.setdefault(f, []).extend(vals)
            if span.prefill:
                state.trace.prompt_tokens = max(state.trace.prompt_tokens,
                                                max(span.positions) + 1)
            if state.rules is None:
                continue
            hits = state.rules.step(
                enc.selected[lo:lo + n],
                probe_values[lo:lo + n] if probe_values is not None else None,
                list(span.positions), [span.prefill] * n)
            for hit in hits:
                if probes is not None and probes.reads_features and hit.position in span.positions:
                    row = enc.selected[lo + list(span.positions).index(hit.position)]
                    hit = self._explain_features(hit, row[engine.probe_feature_columns])
                record = _hit_record(hit)
                state.trace.hits.append(record)
                out.append((state, record))
                self._verdict_for(state, hit)
        return out, new_tokens, series

    def _explain_features(self, hit: Any, feature_values: torch.Tensor) -> Any:
        """Names the features behind each features probe in the hit's evidence: reviewers see
        which SAE features (with catalog labels) made the score, not just the score."""
        probes, labels = self.runtime.probes, self.runtime.labels()
        parts = []
        for e in hit.evidence:
            name = e.signal.removeprefix("probe ")
            if not e.signal.startswith("probe ") or not probes.probe(name).reads_features:
                continue
            terms = ", ".join(f"{f}{f' {labels[f]!r}' if f in labels else ''} {v:+.3g}"
                              for f, v in probes.contributions(name, feature_values))
            parts.append(f"probe {name} from features {terms or 'none active'}")
        if not parts:
            return hit
        return replace(hit, explanation=f"{hit.explanation} ({'; '.join(parts)})")

    def _verdict_for(self, state: RequestState, hit: Any) -> None:
        tag = state.trace.request_tag
        telemetry = self.runtime.telemetry
        telemetry.record_hit(state.span, rule=hit.rule, severity=hit.severity,
                             action=hit.action.type, score=float(hit.score),
                             explanation=hit.explanation, request_tag=tag)
        if hit.action.type == "block" and not state.blocked_by:
            state.blocked_by = hit.rule
            state.pending.append(monitor_pb2.Verdict(
                request_tag=tag, kind=monitor_pb2.VERDICT_KIND_BLOCK, rule=hit.rule,
                reason=hit.explanation))
        elif hit.action.type == "steer" and not state.blocked_by:
            state.pending.append(monitor_pb2.Verdict(
                request_tag=tag, kind=monitor_pb2.VERDICT_KIND_STEER, rule=hit.rule,
                reason=hit.explanation, steer=convert.steer_proto(hit.action.steer)))

    def _close(self, end: monitor_pb2.RequestEnd) -> None:
        state = self.requests.pop(end.request_tag)
        trace = state.trace
        trace.ended_at = utcnow()
        trace.finish_reason = "blocked" if state.blocked_by else (end.finish_reason or "stop")
        trace.blocked = bool(state.blocked_by)
        trace.blocked_by = state.blocked_by
        trace.completion_tokens = end.completion_tokens or sum(
            1 for t in trace.tokens if not t.prompt)
        trace.completion_text = end.completion_text
        trace.monitoring_gap = trace.monitoring_gap or end.monitoring_gap
        self.runtime.telemetry.end_generation(
            state.span, input_tokens=trace.prompt_tokens, output_tokens=trace.completion_tokens,
            finish_reason=trace.finish_reason, blocked_by=trace.blocked_by, trace_id=trace.id)
        stored = state.policy.monitoring and (
            bool(trace.hits) or self.runtime.settings.trace_store == "all")
        if stored:
            self.writer.save(trace)
        watcher = self.runtime.watchers.get(trace.request_tag)
        if watcher is not None:
            watcher.put_nowait(("end", trace if stored else None))

    async def close(self) -> None:
        """The stream ended: requests still open are recorded with a monitoring gap."""
        for tag in list(self.requests):
            self._close(monitor_pb2.RequestEnd(request_tag=tag, finish_reason="incomplete",
                                               monitoring_gap=True))


def _hit_record(hit: Any) -> HitRecord:
    return HitRecord(
        rule=hit.rule, severity=hit.severity, action=hit.action.type, position=hit.position,
        score=float(hit.score), explanation=hit.explanation,
        evidence=[Evidence(signal=e.signal, position=e.position, value=float(e.value))
                  for e in hit.evidence])
