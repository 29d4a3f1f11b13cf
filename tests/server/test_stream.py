"""The monitoring step on its own: `StreamSession.handle` over domain types, against a real
embedded Redis (no gRPC): check -> open -> evaluate -> record -> verdicts -> close."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from latentguard.monitors.rules import Rule, RuleEngine, Steer, bind_pack, load_rule_pack
from latentguard.monitors.sae import load_sae
from latentguard.server.config import Settings
from latentguard.server.errors import InvalidArgument, ResourceExhausted
from latentguard.server.events import HitFound, RequestEnded, TokensSeen, VerdictGiven, Watchers
from latentguard.server.records import TraceFilter
from latentguard.server.runtime import MonitorRuntime
from latentguard.server.step import RequestClose, RequestOpen, Span, Step
from latentguard.server.store import Store
from latentguard.server.stream import StreamSession
from latentguard.server.telemetry import setup_telemetry
from latentguard.server.tokens import TokenTexts
from latentguard.server.writer import TraceWriter
from latentguard.v1 import monitor_pb2
from tests.server.fixtures import D_IN, RULES, build_sae


class Harness:
    def __init__(self, session: StreamSession, store: Store, writer: TraceWriter,
                 watchers: Watchers, spans: InMemorySpanExporter) -> None:
        self.session, self.store, self.writer = session, store, writer
        self.watchers, self.spans = watchers, spans

    async def traces(self) -> dict[str, Any]:
        await self.writer.flush()
        page, _ = await self.store.traces.list(TraceFilter(page_size=100))
        return {t.request_tag: await self.store.traces.get(t.id) for t in page}


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    async with open_harness(tmp_path) as opened:
        yield opened


@asynccontextmanager
async def open_harness(tmp_path: Path, **overrides: Any) -> AsyncIterator[Harness]:
    sae = build_sae(tmp_path / "sae")
    settings = Settings(data_dir=tmp_path / "data", sae_path=sae, model_name="tiny", **overrides)
    store = await Store.open(None, settings.data_dir, retention=timedelta(days=1))
    # Written to the store directly, so bound here (the Rules service and the start-up pack
    # bind what they store to the sidecar's SAE).
    pack = bind_pack(load_rule_pack(RULES), load_sae(sae).identity)
    for rule in pack.rules:
        await store.rules.put(rule.name, rule.model_dump(mode="json"), expected_version=0)
    for policy in pack.policies:
        await store.policies.put(policy.name, policy.model_dump(mode="json"), expected_version=0)
    exporter = InMemorySpanExporter()
    telemetry = setup_telemetry(span_processors=[SimpleSpanProcessor(exporter)])
    runtime = await MonitorRuntime.create(settings, store, telemetry)
    writer = TraceWriter(store, settings.data_dir).start()
    watchers = Watchers()
    session = StreamSession(runtime, writer, watchers, TokenTexts())
    try:
        yield Harness(session, store, writer, watchers, exporter)
    finally:
        await writer.close()
        await store.close()


def rows(*values: dict[int, float]) -> torch.Tensor:
    out = torch.zeros(len(values), D_IN)
    for r, v in enumerate(values):
        for dim, x in v.items():
            out[r, dim] = x
    return out


def span(tag: str, start: int, positions: list[int], prefill: bool = False) -> Span:
    return Span(tag=tag, row_start=start, positions=positions,
                token_ids=[100 + p for p in positions], prefill=prefill)


async def test_a_step_blocks_steers_and_records(harness: Harness) -> None:
    s = harness.session
    watcher = harness.watchers.watch("A", features=[3])
    first = await s.handle(Step(1, rows({}, {}, {}), opened=[RequestOpen("A"), RequestOpen("B")],
                                spans=[span("A", 0, [0, 1], prefill=True),
                                       span("B", 2, [0], prefill=True)]))
    assert first == []  # prompt rows are outside the block and steer rules' scope
    verdicts = await s.handle(Step(2, rows({3: 2.5}, {7: 4.0}),
                                   spans=[span("A", 0, [2]), span("B", 1, [1])]))
    by_tag = {v.request_tag: v for v in verdicts}
    assert by_tag["A"].kind == "block" and by_tag["A"].rule == "unsafe-code"
    assert by_tag["B"].kind == "steer" and by_tag["B"].steer == Steer.model_validate(
        {"mode": "clamp", "features": [{"feature": 7, "value": 0.5}], "tokens": 4})
    # A blocked request gets no second block verdict when its rule fires again.
    again = await s.handle(Step(3, rows({}, {3: 3.0}), spans=[span("A", 1, [3])],
                                closed=[RequestClose("B", "stop")]))
    assert [v.kind for v in again] == []
    await s.handle(Step(4, closed=[RequestClose("A", "stop")]))
    stored = await harness.traces()
    assert stored["A"].blocked and stored["A"].blocked_by == "unsafe-code"
    assert stored["A"].finish_reason == "blocked" and stored["A"].prompt_tokens == 2
    assert [t.position for t in stored["A"].tokens] == [0, 1, 2, 3]
    assert stored["A"].tokens[2].top_features[0].feature == 3
    assert [h.rule for h in stored["B"].hits] == ["calm-down"]
    assert stored["B"].hits[0].action.steer is not None  # the hit keeps the rule's steer
    events: list[Any] = []
    while not watcher.empty():
        events.append(watcher.get_nowait())
    kinds = [type(e) for e in events]
    assert kinds[:4] == [TokensSeen, TokensSeen, HitFound, VerdictGiven]
    assert kinds[-1] is RequestEnded and events[-1].trace.id == stored["A"].id
    assert events[1].series == {3: [2.5]}  # the watched feature, from the same one encode
    finished = harness.spans.get_finished_spans()
    assert len(finished) == 2  # one span per generation, ended when the request closed
    hit_events = [e for sp in finished for e in sp.events]
    assert {e.attributes["gen_ai.evaluation.name"] for e in hit_events} >= {"unsafe-code",
                                                                             "calm-down"}


async def test_monitoring_off_and_unknown_requests(harness: Harness) -> None:
    s = harness.session
    assert await s.handle(Step(1, rows({3: 9.0}), opened=[RequestOpen("Q", policy="quiet")],
                               spans=[span("Q", 0, [0])])) == []
    with pytest.raises(InvalidArgument) as err:
        await s.handle(Step(2, rows({}), spans=[span("nobody", 0, [0])]))
    assert err.value.field == "spans[0].request_tag"
    with pytest.raises(InvalidArgument) as err:
        await s.handle(Step(3, closed=[RequestClose("nobody")]))
    assert err.value.field == "finished[0].request_tag"
    await s.handle(Step(4, closed=[RequestClose("Q")]))
    assert "Q" not in await harness.traces()  # a policy without monitoring stores nothing


async def test_a_request_keeps_the_rules_it_started_under(harness: Harness) -> None:
    """The rules change mid-request: A goes on with the rules it started under (its window
    state too), C gets the new ones; both are evaluated in the same steps, from one encode."""
    s = harness.session
    old = s.runtime.engine
    assert old is not None
    await s.handle(Step(1, rows({5: 0.75}), opened=[RequestOpen("A")], spans=[span("A", 0, [0])]))
    sae = s.runtime.sae
    assert sae is not None
    s.runtime.engine = RuleEngine([Rule.model_validate(
        {"name": "nine", "when": {"feature": 9, "threshold": 1.0}})], d_sae=sae.d_sae)
    verdicts = await s.handle(Step(2, rows({3: 2.5, 5: 0.5, 9: 2.0}, {3: 2.5, 9: 2.0}),
                                   opened=[RequestOpen("C")],
                                   spans=[span("A", 0, [1]), span("C", 1, [0])]))
    assert [(v.request_tag, v.rule) for v in verdicts] == [("A", "unsafe-code")]
    assert len(s.batches) == 2
    await s.handle(Step(3, closed=[RequestClose("A", "stop"), RequestClose("C", "stop")]))
    assert list(s.batches) == [s.runtime.engine]  # the old engine's state went with A
    stored = await harness.traces()
    # watch-5's sum over 2 tokens carried across the steps: 0.75 + 0.5 > 1.0
    assert [h.rule for h in stored["A"].hits] == ["unsafe-code", "watch-5"]
    assert [h.rule for h in stored["C"].hits] == ["nine"]


async def test_a_stream_that_ends_records_open_requests_as_gaps(harness: Harness) -> None:
    s = harness.session
    await s.handle(Step(1, rows({}), opened=[RequestOpen("G")], spans=[span("G", 0, [0], True)]))
    await s.close_all()
    trace = (await harness.traces())["G"]
    assert trace.monitoring_gap and trace.finish_reason == "incomplete"


async def test_a_request_started_twice_closes_the_first(harness: Harness) -> None:
    s = harness.session
    await s.handle(Step(1, opened=[RequestOpen("R")]))
    await s.handle(Step(2, opened=[RequestOpen("R")]))
    assert len(s.requests) == 1
    trace = (await harness.traces())["R"]
    assert trace.finish_reason == "restarted" and trace.monitoring_gap


async def test_a_trace_keeps_at_most_max_tokens_per_request(tmp_path: Path, caplog) -> None:
    """A request that goes on and on: its trace keeps the first `max_tokens_per_request` tokens
    and as many hits, and counts the rest; rules still fire and block past the cap."""
    caplog.set_level(logging.INFO, logger="latentguard.server.stream")
    async with open_harness(tmp_path, max_tokens_per_request=4) as h:
        s = h.session
        # watch-5 (scope both, window sum of 2 > 1) fires when feature 5 comes back after two
        # quiet tokens: at positions 0, 3, 6, 9 and 12; unsafe-code blocks at 15.
        fives = [2.0 if p % 3 == 0 else 0.0 for p in range(15)]
        await s.handle(Step(1, rows(*({5: v} for v in fives[:3])), opened=[RequestOpen("L")],
                            spans=[span("L", 0, [0, 1, 2], prefill=True)]))
        for p in range(3, 15):
            assert await s.handle(Step(p, rows({5: fives[p]}), spans=[span("L", 0, [p])])) \
                == []
        verdicts = await s.handle(Step(15, rows({3: 5.0}), spans=[span("L", 0, [15])]))
        assert [(v.kind, v.rule) for v in verdicts] == [("block", "unsafe-code")]
        assert len(s.requests["L"].trace.tokens) == 4  # bounded while the request is open
        await s.handle(Step(16, closed=[RequestClose("L", "stop")]))
        trace = (await h.traces())["L"]
    assert [t.position for t in trace.tokens] == [0, 1, 2, 3]
    assert trace.tokens_dropped == 12 and trace.truncated
    assert [h.position for h in trace.hits] == [0, 3, 6, 9] and trace.hits_dropped == 2
    assert trace.blocked and trace.blocked_by == "unsafe-code"
    assert (trace.prompt_tokens, trace.completion_tokens) == (3, 13)  # all, kept or not
    said = [r.getMessage() for r in caplog.records
            if "LATENTGUARD_MAX_TOKENS_PER_REQUEST" in r.getMessage()]
    assert len(said) == 2  # once when the cap is reached, once at the end with the counts
    assert "dropped 12 tokens and 2 hits" in said[1]


async def test_a_watched_request_sees_every_token_past_the_cap(tmp_path: Path) -> None:
    """Inspect and Generate watch their request: they get every token, the trace the first."""
    async with open_harness(tmp_path, max_tokens_per_request=2) as h:
        s = h.session
        watcher = h.watchers.watch("W", features=[5])
        await s.handle(Step(1, rows({}, {}, {5: 1.5}), opened=[RequestOpen("W")],
                            spans=[span("W", 0, [0, 1, 2], prefill=True)]))
        await s.handle(Step(2, rows({}), spans=[span("W", 0, [3])],
                            closed=[RequestClose("W", "stop")]))
        seen: list[Any] = []
        while not watcher.empty():
            event = watcher.get_nowait()
            if isinstance(event, TokensSeen):
                seen.extend(event.records)
        trace = (await h.traces())["W"]
    assert [t.position for t in seen] == [0, 1, 2, 3]
    assert [t.position for t in trace.tokens] == [0, 1] and trace.tokens_dropped == 2


async def test_open_requests_per_stream_are_capped(tmp_path: Path) -> None:
    async with open_harness(tmp_path, max_open_requests=2) as h:
        s = h.session
        await s.handle(Step(1, opened=[RequestOpen("A"), RequestOpen("B")]))
        with pytest.raises(ResourceExhausted) as err:
            await s.handle(Step(2, rows({}), opened=[RequestOpen("C")],
                                spans=[span("C", 0, [0], prefill=True)]))
        assert err.value.field == "started"
        assert "LATENTGUARD_MAX_OPEN_REQUESTS (2)" in str(err.value)
        assert set(s.requests) == {"A", "B"}  # the refused step opened nothing
        await s.handle(Step(3, opened=[RequestOpen("A")]))  # started again: still two open
        await s.handle(Step(4, closed=[RequestClose("B")]))
        await s.handle(Step(5, opened=[RequestOpen("C")]))
        assert set(s.requests) == {"A", "C"}


def test_ready_comes_after_the_warm_up(tmp_path: Path) -> None:
    """The sidecar answers Ready only once the first step will be fast: the model's tokenizer
    (for token text) is loaded for the hello's model, and the SAE and rules have run once."""
    from latentguard.lab.tinymodel import build_tokenizer
    from tests.server.fixtures import StreamDriver
    from tests.server.helpers import running_sidecar

    model = tmp_path / "model"
    model.mkdir()
    build_tokenizer(model)
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    with running_sidecar(tmp_path / "data", sae_path=build_sae(tmp_path / "sae"),
                         rules_file=rules) as sidecar:
        assert str(model) not in sidecar.sidecar.token_texts
        with sidecar.channel() as channel:
            drive = StreamDriver(channel)
            ready = drive.send(monitor_pb2.MonitorMessage(hello=monitor_pb2.Hello(
                client="test", model=str(model), d_model=D_IN)))
            assert ready.WhichOneof("kind") == "ready"
            assert str(model) in sidecar.sidecar.token_texts
            assert sidecar.sidecar.token_texts.for_model(str(model)) is not None
            drive.close()


async def test_an_sae_of_another_site_is_refused(tmp_path: Path) -> None:
    """The plugin captures the residual stream after a layer: an SAE trained on an MLP's output
    would read vectors it never saw, so the sidecar refuses it at start, naming the site."""
    from latentguard.monitors.errors import SAEFormatError
    from latentguard.monitors.sae import SAEConfig, StandardSAE, save_saelens

    cfg = SAEConfig(architecture="standard", d_in=D_IN, d_sae=8,
                    hook_name="blocks.1.hook_mlp_out", layer=1, site="mlp_out")
    sae = StandardSAE(cfg, {"W_enc": torch.zeros(D_IN, 8), "b_enc": torch.zeros(8),
                            "W_dec": torch.zeros(8, D_IN), "b_dec": torch.zeros(D_IN)})
    folder = save_saelens(sae, tmp_path / "mlp-sae", model_name="tiny-test")
    settings = Settings(data_dir=tmp_path / "data", sae_path=folder)
    store = await Store.open(None, settings.data_dir, retention=timedelta(days=1))
    try:
        with pytest.raises(SAEFormatError, match="mlp_out.*resid_post"):
            await MonitorRuntime.create(settings, store, setup_telemetry())
    finally:
        await store.close()
