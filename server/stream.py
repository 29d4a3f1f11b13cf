"""One Monitor stream: the requests it carries, their rule state, traces and verdicts.

A step goes through a short pipeline over domain types (`server.step`; protos are converted
in `services/monitor.py`):

    check -> open -> evaluate -> record -> verdicts (-> close)

`evaluate` is the CPU part (one SAE encode for all rows, probe scores, the rules of all the
step's requests in one pass of a `RuleBatch`) and runs in a worker thread, off the event loop;
the other stages are cheap and run on the loop. Traces are saved and alerts published by the
writer in the background.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import torch
from opentelemetry.trace import Span as OtelSpan
from torch import Tensor

from latentguard.monitors.rules import Policy, RuleEngine, RuleHit
from latentguard.monitors.rules.batch import RuleBatch, RuleSpan
from latentguard.monitors.rules.signals import probe_scores
from latentguard.server.errors import (
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
    quoted,
)
from latentguard.server.events import HitFound, RequestEnded, TokensSeen, VerdictGiven, Watchers
from latentguard.server.records import AlertRecord, FeatureValue, TokenRecord, TraceRecord, utcnow
from latentguard.server.runtime import MonitorRuntime
from latentguard.server.step import RequestClose, RequestOpen, Span, Step
from latentguard.server.tokens import TokenTexts
from latentguard.server.trace_signals import rule_signal_values
from latentguard.server.writer import TraceWriter
from latentguard.wire import Verdict

log = logging.getLogger(__name__)


@dataclass
class RequestState:
    trace: TraceRecord
    policy: Policy
    rules: RuleBatch | None
    """The batch holding the request's rule state (that of the engine it started under, see
    `StreamSession.batches`); None when its policy turns monitoring off or no rules are
    loaded."""
    span: OtelSpan
    blocked_by: str = ""
    generated: int = 0
    """Generated tokens monitored, kept in the trace or not."""


@dataclass(frozen=True)
class SpanResult:
    """What `evaluate` found in one span."""

    span: Span
    rows: Tensor
    tokens: list[TokenRecord]
    hits: list[RuleHit]
    series: dict[int, list[float]]
    """Watched feature -> its values on the span's tokens."""


class StreamSession:
    def __init__(self, runtime: MonitorRuntime, writer: TraceWriter, watchers: Watchers,
                 token_texts: TokenTexts, client: str = "") -> None:
        self.runtime = runtime
        self.writer = writer
        self.watchers = watchers
        self.token_texts = token_texts
        self.client = client
        self.requests: dict[str, RequestState] = {}
        self.batches: dict[RuleEngine, RuleBatch] = {}
        """The rule state of this stream's requests, one batch per engine: a request keeps the
        engine it started under when the rules change (usually one engine)."""

    async def handle(self, step: Step) -> list[Verdict]:
        """The step's verdicts (blocks and steers from the rules that fired)."""
        start = time.perf_counter()
        self.check(step)
        for opened in step.opened:
            self.open(opened)
        results = await asyncio.to_thread(self.evaluate, step) if step.spans else []
        verdicts = [v for result in results for v in self.record(result)]
        for closed in step.closed:
            self.close(closed)
        telemetry = self.runtime.telemetry
        telemetry.tokens_monitored.add(int(step.rows.shape[0]))
        telemetry.verdict_latency.record(time.perf_counter() - start)
        return verdicts

    # ---- check ----------------------------------------------------------------------------

    def check(self, step: Step) -> None:
        """What the step says about requests agrees with what this stream knows (the message's
        own consistency was checked when it was converted). Runs before `open`, so a step
        refused here changes nothing: no request opened, no span applied."""
        if self.runtime.sae is None:
            raise FailedPrecondition("no SAE loaded: set LATENTGUARD_SAE_PATH")
        new = [o.tag for o in step.opened]
        seen: set[str] = set()
        for i, tag in enumerate(new):
            if tag in seen:
                raise InvalidArgument(f"started[{i}].request_tag: {quoted(tag)} started twice "
                                      "in this step", field=f"started[{i}].request_tag")
            seen.add(tag)
        cap = self.runtime.settings.max_open_requests
        opening = len(set(new) - set(self.requests))  # a tag started again replaces its request
        if len(self.requests) + opening > cap:
            raise ResourceExhausted(
                f"started: {len(self.requests)} requests are open on this stream and {opening} "
                f"more would pass LATENTGUARD_MAX_OPEN_REQUESTS ({cap})", field="started")
        known = set(self.requests) | set(new)
        for i, span in enumerate(step.spans):
            if span.tag not in known:
                raise InvalidArgument(f"spans[{i}].request_tag: unknown request {quoted(span.tag)} "
                                      "(not started)", field=f"spans[{i}].request_tag")
        ended: set[str] = set()
        for i, end in enumerate(step.closed):
            if end.tag not in known:
                raise InvalidArgument(f"finished[{i}].request_tag: unknown request "
                                      f"{quoted(end.tag)}", field=f"finished[{i}].request_tag")
            if end.tag in ended:
                raise InvalidArgument(f"finished[{i}].request_tag: {quoted(end.tag)} ended "
                                      "twice in this step", field=f"finished[{i}].request_tag")
            ended.add(end.tag)

    # ---- open -----------------------------------------------------------------------------

    def open(self, s: RequestOpen) -> None:
        if s.tag in self.requests:
            log.warning("request %s started twice; closing the first", s.tag)
            self.close(RequestClose(tag=s.tag, finish_reason="restarted", monitoring_gap=True))
        runtime = self.runtime
        policy = runtime.policy(s.policy)
        model = s.model or runtime.settings.model_name
        span = runtime.telemetry.start_generation(model=model, request_tag=s.tag,
                                                  policy=policy.name)
        ctx = span.get_span_context()
        trace = TraceRecord(
            request_tag=s.tag, model=model, policy=policy.name, prompt_tokens=s.prompt_tokens,
            prompt_text=s.prompt_text, otel_trace_id=f"{ctx.trace_id:032x}",
            otel_span_id=f"{ctx.span_id:016x}",
        )
        engine = runtime.engine
        rules = None
        if policy.monitoring and engine is not None:
            rules = self.batches.get(engine)
            if rules is None:
                rules = self.batches[engine] = engine.new_batch()
            rules.open(s.tag, engine.rules_for(policy))
        self.requests[s.tag] = RequestState(trace=trace, policy=policy, rules=rules, span=span)
        if policy.monitoring:
            self.writer.opened(trace)

    # ---- evaluate (worker thread) ---------------------------------------------------------

    def evaluate(self, step: Step) -> list[SpanResult]:
        """One encode of all the step's rows, probe scores, the rules of all monitored spans
        in one pass (per engine: see `batches`), then each span's token records. Reads
        request state, changes only the rule state."""
        sae, engine, probes = self.runtime.sae, self.runtime.engine, self.runtime.probes
        assert sae is not None  # check() refused the step otherwise
        monitored = [s for s in step.spans if self.requests[s.tag].policy.monitoring]
        if not monitored:
            return []
        # The current engine's signals go in the trace; an engine the rules moved on from
        # still serves the requests that started under it.
        in_use = {id(self.requests[s.tag].rules) for s in monitored}
        engines = [engine] if engine is not None else []
        engines += [e for e, b in self.batches.items() if e is not engine and id(b) in in_use]
        watched = sorted({f for s in monitored
                          if (w := self.watchers.get(s.tag)) is not None for f in w.features})
        idx = torch.cat([*(e.signal_features for e in engines),
                         torch.tensor(watched, dtype=torch.long)])
        rows = step.rows
        enc = sae.encode_for_monitor(rows, idx, self.runtime.settings.top_k)
        signals: dict[RuleEngine, tuple[Tensor, Tensor | None]] = {}
        col = 0
        for e in engines:
            features = enc.selected[:, col:col + e.signal_features.numel()]
            col += e.signal_features.numel()
            signals[e] = features, probe_scores(e, probes, rows, features)
        selected, probe_values = signals[engine] if engine is not None else (enc.selected[:, :0],
                                                                              None)
        watched_cols = {f: col + i for i, f in enumerate(watched)}
        hits_of = self._rule_hits(monitored, signals)
        top_vals, top_idx = enc.topk_values.tolist(), enc.topk_indices.tolist()
        signal_names, signal_values = rule_signal_values(engine, selected, probe_values)
        cap = self.runtime.settings.max_tokens_per_request
        results = []
        for span in monitored:
            state = self.requests[span.tag]
            lo, hi = span.row_start, span.stop
            text = self.token_texts.for_model(state.trace.model)
            watcher = self.watchers.get(span.tag)
            # Records only for the tokens the trace will keep, unless someone watches them all.
            room = max(0, cap - len(state.trace.tokens))
            n = hi - lo if watcher is not None else min(hi - lo, room)
            tokens = [
                TokenRecord(position=pos, token_id=tok, prompt=span.prefill,
                            text=text(tok) if text is not None else "",
                            top_features=[FeatureValue(feature=f, value=v) for f, v in
                                          zip(top_idx[r], top_vals[r], strict=True) if v > 0],
                            signals=dict(zip(signal_names, signal_values[r], strict=True)))
                for r, pos, tok in zip(range(lo, lo + n), span.positions[:n],
                                       span.token_ids[:n], strict=True)]
            series = {f: enc.selected[lo:hi, watched_cols[f]].tolist()
                      for f in (watcher.features if watcher is not None else [])}
            results.append(SpanResult(span, rows[lo:hi], tokens, hits_of.get(id(span), []),
                                      series))
        return results

    def _rule_hits(self, monitored: list[Span], signals: dict[RuleEngine, tuple[Tensor,
                   Tensor | None]]) -> dict[int, list[RuleHit]]:
        """Each batch's spans in one step of it: the hits of each span (by id)."""
        probes = self.runtime.probes
        explain = probes is not None and probes.reads_features
        out: dict[int, list[RuleHit]] = {}
        for engine, batch in self.batches.items():
            spans = [s for s in monitored if self.requests[s.tag].rules is batch]
            if not spans or engine not in signals:
                continue
            features, probe_values = signals[engine]
            found = batch.step(features, probe_values, [
                RuleSpan(s.tag, s.row_start, s.positions, s.prefill) for s in spans])
            labels = self.runtime.labels() if explain and any(found) else {}
            for span, hits in zip(spans, found, strict=True):
                if explain and hits:
                    assert probes is not None
                    hits = [probes.explain(h, features[span.row_start + span.positions.index(
                                h.position), engine.probe_feature_columns], labels)
                            if h.position in span.positions else h for h in hits]
                out[id(span)] = hits
        return out

    # ---- record and verdicts --------------------------------------------------------------

    def record(self, result: SpanResult) -> list[Verdict]:
        """Adds the span's tokens and hits to the trace, publishes alerts, tells watchers and
        telemetry; returns the verdicts its hits call for."""
        span, state = result.span, self.requests[result.span.tag]
        trace = state.trace
        cap = self.runtime.settings.max_tokens_per_request
        kept = result.tokens[:max(0, cap - len(trace.tokens))]
        trace.tokens.extend(kept)
        self._dropped(state, tokens=len(span.positions) - len(kept))
        if span.prefill:
            trace.prompt_tokens = max(trace.prompt_tokens, max(span.positions) + 1)
        else:
            state.generated += len(span.positions)
        for tap in self.watchers.taps:
            tap(span.tag, span.positions, span.token_ids, result.rows.clone())
        self.watchers.put(span.tag, TokensSeen(result.tokens, result.series))
        verdicts = []
        for hit in result.hits:
            verdict = self.hit_found(state, hit)
            if verdict is not None:
                verdicts.append(verdict)
        return verdicts

    def hit_found(self, state: RequestState, hit: RuleHit) -> Verdict | None:
        """Keeps the hit in the trace, publishes its alert, tells telemetry and watchers;
        returns the verdict it calls for."""
        trace = state.trace
        if len(trace.hits) < self.runtime.settings.max_tokens_per_request:
            trace.hits.append(hit)
        else:
            self._dropped(state, hits=1)
        self.writer.publish(AlertRecord(trace_id=trace.id, request_tag=trace.request_tag,
                                        model=trace.model, policy=state.policy.name, hit=hit))
        self.runtime.telemetry.record_hit(
            state.span, rule=hit.rule, severity=hit.severity, action=hit.action.type,
            score=hit.score, explanation=hit.explanation, request_tag=trace.request_tag)
        self.watchers.put(trace.request_tag, HitFound(hit))
        verdict = self.verdict(state, hit)
        if verdict is not None:
            self.watchers.put(trace.request_tag, VerdictGiven(verdict))
        return verdict

    def _dropped(self, state: RequestState, *, tokens: int = 0, hits: int = 0) -> None:
        """Counts what the trace did not keep (past `max_tokens_per_request`); says so in the
        log the first time, so a trace's growth is bounded and never silently."""
        if not tokens and not hits:
            return
        trace = state.trace
        if not trace.truncated:
            log.warning("request %s: its trace reached LATENTGUARD_MAX_TOKENS_PER_REQUEST (%d); "
                        "it is still monitored, but later tokens and hits are not kept",
                        trace.request_tag, self.runtime.settings.max_tokens_per_request)
        trace.tokens_dropped += tokens
        trace.hits_dropped += hits

    @staticmethod
    def verdict(state: RequestState, hit: RuleHit) -> Verdict | None:
        """Block on the first blocking hit; steer unless blocked; alerts need no verdict."""
        if state.blocked_by or hit.action.type == "alert":
            return None
        tag = state.trace.request_tag
        if hit.action.type == "block":
            state.blocked_by = hit.rule
            return Verdict(tag, "block", hit.rule, hit.explanation)
        return Verdict(tag, "steer", hit.rule, hit.explanation, hit.action.steer)

    # ---- close ----------------------------------------------------------------------------

    def close(self, end: RequestClose) -> None:
        state = self.requests.pop(end.tag)
        trace = state.trace
        if state.rules is not None:
            # End rules read the whole request (alerts only; nothing is left to block). A
            # request cut short (monitoring gap) is checked on the tokens that were seen.
            for hit in state.rules.finish(end.tag):
                self.hit_found(state, hit)
            state.rules.close(end.tag)
            engine = self.runtime.engine
            if len(state.rules) == 0 and (engine is None
                                          or state.rules is not self.batches.get(engine)):
                # The last request of an engine the rules have moved on from.
                self.batches = {e: b for e, b in self.batches.items() if b is not state.rules}
        trace.ended_at = utcnow()
        trace.finish_reason = "blocked" if state.blocked_by else (end.finish_reason or "stop")
        trace.blocked = bool(state.blocked_by)
        trace.blocked_by = state.blocked_by
        trace.completion_tokens = end.completion_tokens or state.generated
        trace.completion_text = end.completion_text
        trace.monitoring_gap = trace.monitoring_gap or end.monitoring_gap
        if trace.truncated:
            log.info("request %s ended: its trace keeps %d tokens and %d hits, dropped %d "
                     "tokens and %d hits past LATENTGUARD_MAX_TOKENS_PER_REQUEST",
                     trace.request_tag, len(trace.tokens), len(trace.hits),
                     trace.tokens_dropped, trace.hits_dropped)
        self.runtime.telemetry.end_generation(
            state.span, input_tokens=trace.prompt_tokens, output_tokens=trace.completion_tokens,
            finish_reason=trace.finish_reason, blocked_by=trace.blocked_by, trace_id=trace.id)
        stored = state.policy.monitoring and (
            bool(trace.hits) or self.runtime.settings.trace_store == "all")
        if stored:
            self.writer.save(trace)
        elif state.policy.monitoring:
            self.writer.discard(trace)
        self.watchers.put(end.tag, RequestEnded(trace if stored else None))

    async def close_all(self) -> None:
        """The stream ended: requests still open are recorded with a monitoring gap."""
        for tag in list(self.requests):
            self.close(RequestClose(tag=tag, finish_reason="incomplete", monitoring_gap=True))
