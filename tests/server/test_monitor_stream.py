"""Monitor.Stream end to end: activations in, verdicts out, traces and alerts stored, read back
through the Traces API and the CLI, with OpenTelemetry spans and events."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from latentguard.cli.main import main as cli
from latentguard.v1 import (
    common_pb2,
    monitor_pb2,
    monitor_pb2_grpc,
    rules_pb2,
    rules_pb2_grpc,
    traces_pb2,
    traces_pb2_grpc,
)
from tests.server.fixtures import D_IN, D_SAE, RULES, StreamDriver, build_sae, rows
from tests.server.helpers import running_sidecar


@pytest.fixture
def sidecar(tmp_path: Path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    with running_sidecar(tmp_path / "data", sae_path=build_sae(tmp_path / "sae"),
                         rules_file=rules, model_name="tiny-test") as running:
        yield running


def start(tag: str, policy: str = "", **kw: object) -> monitor_pb2.RequestStart:
    return monitor_pb2.RequestStart(request_tag=tag, policy=policy, prompt_tokens=2, **kw)


def test_stream_blocks_steers_and_records(sidecar, tmp_path: Path, capsys) -> None:
    drive = StreamDriver(sidecar.channel())
    ready = drive.hello().ready
    assert (ready.d_model, ready.d_sae, ready.layer) == (D_IN, D_SAE, 1)

    # Step 1: two prompts (prefill). Feature 3 fires in A's prompt, but unsafe-code only looks
    # at generated tokens; watch-5 (scope both) sees B's prompt.
    reply = drive.step(
        step=1, started=[start("A"), start("B"), start("C", policy="quiet")],
        spans=[monitor_pb2.RowSpan(request_tag="A", row_start=0, positions=[0, 1],
                                   token_ids=[11, 12], prefill=True),
               monitor_pb2.RowSpan(request_tag="B", row_start=2, positions=[0, 1],
                                   token_ids=[21, 22], prefill=True),
               monitor_pb2.RowSpan(request_tag="C", row_start=4, positions=[0],
                                   token_ids=[31], prefill=True)],
        rows=rows({3: 9.0}, {}, {5: 0.6}, {5: 0.6}, {3: 9.0}))
    assert reply.verdicts.step == 1 and list(reply.verdicts.verdicts) == []

    # Step 2: one generated token each. A's crosses the block rule; B's the steer rule.
    reply = drive.step(
        step=2,
        spans=[monitor_pb2.RowSpan(request_tag="A", row_start=0, positions=[2], token_ids=[13]),
               monitor_pb2.RowSpan(request_tag="B", row_start=1, positions=[2], token_ids=[23]),
               monitor_pb2.RowSpan(request_tag="C", row_start=2, positions=[1], token_ids=[32])],
        rows=rows({3: 2.5, 1: 0.5}, {7: 4.0}, {3: 9.0}))
    verdicts = {v.request_tag: v for v in reply.verdicts.verdicts}
    assert set(verdicts) == {"A", "B"}
    assert verdicts["A"].kind == monitor_pb2.VERDICT_KIND_BLOCK
    assert verdicts["A"].rule == "unsafe-code" and "feature 3" in verdicts["A"].reason
    assert verdicts["B"].kind == monitor_pb2.VERDICT_KIND_STEER
    assert verdicts["B"].steer.mode == common_pb2.STEER_MODE_CLAMP
    assert verdicts["B"].steer.features[0].feature == 7

    # Bad batches are answered with an error naming the field; the stream stays usable.
    bad = drive.step(step=3, spans=[monitor_pb2.RowSpan(request_tag="B", row_start=0,
                                                        positions=[3], token_ids=[24])],
                     rows=rows({}, width=D_IN + 1))
    assert bad.error.code == "INVALID_ARGUMENT" and bad.error.field == "rows.shape"
    bad = drive.step(step=4, spans=[monitor_pb2.RowSpan(request_tag="nobody", row_start=0,
                                                        positions=[3], token_ids=[24])],
                     rows=rows({}))
    assert bad.error.field == "spans[0].request_tag"
    bad = drive.step(step=5, spans=[monitor_pb2.RowSpan(request_tag="B", row_start=0,
                                                        positions=[3, 4], token_ids=[24])],
                     rows=rows({}, {}))
    assert bad.error.field == "spans[0].token_ids"
    truncated = rows({}, {})
    truncated.data = truncated.data[:-4]
    bad = drive.step(step=6, spans=[monitor_pb2.RowSpan(request_tag="B", row_start=0,
                                                        positions=[3], token_ids=[24])],
                     rows=truncated)
    assert bad.error.field == "rows.data"

    reply = drive.step(step=7, finished=[
        monitor_pb2.RequestEnd(request_tag="A", finish_reason="stop", completion_text="x"),
        monitor_pb2.RequestEnd(request_tag="B", finish_reason="length", completion_tokens=1),
        monitor_pb2.RequestEnd(request_tag="C", finish_reason="stop")])
    assert reply.verdicts.step == 7
    drive.close()
    sidecar.run(sidecar.sidecar.writer.flush())

    traces = traces_pb2_grpc.TracesStub(sidecar.channel())
    listed = traces.ListTraces(traces_pb2.ListTracesRequest()).traces
    by_tag = {t.request_tag: t for t in listed}
    assert set(by_tag) == {"A", "B"}  # C's policy turns monitoring off: no trace
    a = traces.GetTrace(traces_pb2.GetTraceRequest(id=by_tag["A"].id))
    assert a.blocked and a.blocked_by == "unsafe-code" and a.finish_reason == "blocked"
    assert a.status == traces_pb2.TRACE_STATUS_FLAGGED
    assert [t.position for t in a.tokens] == [0, 1, 2]
    assert [t.prompt for t in a.tokens] == [True, True, False]
    assert a.tokens[2].top_features[0].feature == 3
    assert a.tokens[2].top_features[0].value == pytest.approx(2.5)
    assert a.tokens[2].top_features[0].label == "unsafe code"
    assert [h.rule for h in a.hits] == ["unsafe-code"] and a.hits[0].position == 2
    assert a.hits[0].evidence[0].value == pytest.approx(2.5)
    assert len(a.otel_trace_id) == 32
    b = traces.GetTrace(traces_pb2.GetTraceRequest(id=by_tag["B"].id))
    assert sorted(h.rule for h in b.hits) == ["calm-down", "watch-5"]
    assert not b.blocked and b.finish_reason == "length"
    assert b.hits[0].rule == "watch-5" and b.hits[0].position == 1  # 0.6 + 0.6 over 2 tokens

    flagged_a = traces.ListTraces(traces_pb2.ListTracesRequest(rule="unsafe-code")).traces
    assert [t.id for t in flagged_a] == [a.id]

    alerts = traces.StreamAlerts(traces_pb2.StreamAlertsRequest(after_id="0"))
    got = sorted(next(alerts).hit.rule for _ in range(3))
    alerts.cancel()
    assert got == ["calm-down", "unsafe-code", "watch-5"]

    # OpenTelemetry: one span per monitored request, an evaluation event per hit.
    spans = {s.attributes["gen_ai.response.id"]: s for s in sidecar.spans.get_finished_spans()}
    span_a = spans["A"]
    assert span_a.attributes["gen_ai.request.model"] == "tiny-test"
    assert span_a.attributes["gen_ai.usage.output_tokens"] == 1
    assert f"{span_a.context.trace_id:032x}" == a.otel_trace_id
    events = [e for e in span_a.events if e.name == "gen_ai.evaluation.result"]
    assert events[0].attributes["gen_ai.evaluation.name"] == "unsafe-code"
    assert events[0].attributes["gen_ai.evaluation.score.label"] == "block"
    hits = {p.attributes["rule"]: p.value for p in sidecar.metric_points("latentguard.rule.hits")}
    assert hits == {"unsafe-code": 1, "watch-5": 1, "calm-down": 1}
    assert sum(p.value for p in sidecar.metric_points("latentguard.tokens.monitored")) == 8

    # The CLI shows and reviews the same traces.
    target = ["--target", sidecar.target]
    assert cli(["traces", "list", "--status", "flagged", *target]) == 0
    out = capsys.readouterr().out
    assert a.id in out and b.id in out
    assert cli(["traces", "show", a.id, *target]) == 0
    out = capsys.readouterr().out
    assert "BLOCKED by unsafe-code" in out and "<- unsafe-code" in out and a.otel_trace_id in out
    assert cli(["traces", "review", a.id, "--label", "tp", "--reviewer", "ann",
                "--note", "real", *target]) == 0
    assert "reviewed (1 reviews)" in capsys.readouterr().out
    assert cli(["traces", "list", "--status", "flagged", "--json", *target]) == 0
    out = capsys.readouterr().out
    assert a.id not in out and b.id in out
    reviewed = traces.GetTrace(traces_pb2.GetTraceRequest(id=a.id))
    assert reviewed.status == traces_pb2.TRACE_STATUS_REVIEWED
    assert reviewed.reviews[0].reviewer == "ann"
    assert cli(["traces", "alerts", "--after", "0", "--count", "1", "--rule", "unsafe-code",
                *target]) == 0
    assert "unsafe-code" in capsys.readouterr().out


def test_hello_must_match_the_sae(sidecar) -> None:
    with pytest.raises(grpc.RpcError) as err:
        StreamDriver(sidecar.channel()).hello(d_model=D_IN * 2)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "d_model" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        StreamDriver(sidecar.channel()).step(step=1)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_stream_end_records_open_requests_with_a_gap(sidecar) -> None:
    drive = StreamDriver(sidecar.channel())
    drive.hello()
    drive.step(step=1, started=[start("gone")],
               spans=[monitor_pb2.RowSpan(request_tag="gone", row_start=0, positions=[0],
                                          token_ids=[1], prefill=True)], rows=rows({}))
    drive.close()
    traces = traces_pb2_grpc.TracesStub(sidecar.channel())
    for _ in range(100):
        listed = traces.ListTraces(traces_pb2.ListTracesRequest()).traces
        if listed:
            break
        import time

        time.sleep(0.05)
    assert listed[0].monitoring_gap and listed[0].finish_reason == "incomplete"


def test_garbage_and_oversized_messages_leave_the_server_up(tmp_path: Path) -> None:
    with running_sidecar(tmp_path / "d", sae_path=build_sae(tmp_path / "sae"),
                         max_message_mb=1) as s:
        channel = s.channel()
        raw = channel.stream_stream("/latentguard.v1.Monitor/Stream",
                                    request_serializer=lambda b: b,
                                    response_deserializer=lambda b: b)
        with pytest.raises(grpc.RpcError) as err:
            list(raw(iter([b"\xff\xff\xff garbage"]), timeout=5))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        drive = StreamDriver(channel)
        drive.hello()
        big = rows(*([{}] * (1024 * 1024 // (4 * D_IN) + 10)))
        with pytest.raises(grpc.RpcError) as err:
            drive.step(step=1, started=[start("big")], rows=big)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

        fresh = StreamDriver(channel)
        assert fresh.hello().ready.d_sae == D_SAE
        fresh.close()
        stub = monitor_pb2_grpc.MonitorStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.Inspect(monitor_pb2.InspectRequest(text="hi"))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "no model is attached" in err.value.details()


def test_a_request_asking_for_an_impossible_steer_is_refused(sidecar) -> None:
    drive = StreamDriver(sidecar.channel())
    drive.hello()
    steer = common_pb2.Steer(mode=common_pb2.STEER_MODE_ADD,
                             features=[common_pb2.SteerFeature(feature=D_SAE, value=1.0)])
    bad = drive.step(step=1, started=[start("s", steer=steer)])
    assert bad.error.code == "INVALID_ARGUMENT"
    assert bad.error.field == "started[0].steer.features[0].feature"
    no_features = drive.step(step=2, started=[start("s", steer=common_pb2.Steer(
        mode=common_pb2.STEER_MODE_CLAMP))])
    assert no_features.error.field == "started[0].steer.features"
    assert drive.step(step=3, started=[start("s")]).verdicts.step == 3
    drive.close()


def test_the_rule_pack_beside_the_sae_is_applied_unless_a_rules_file_is_given(
        tmp_path: Path) -> None:
    sae = build_sae(tmp_path / "sae")
    (sae / "rules.yaml").write_text(RULES)
    other = tmp_path / "other.yaml"
    other.write_text("rules:\n  - {name: only-this, when: {feature: 1, threshold: 2.0}}\n")

    def names(**kw: object) -> set[str]:
        with running_sidecar(tmp_path / f"d{len(kw)}", sae_path=sae, **kw) as s:
            stub = rules_pb2_grpc.RulesStub(s.channel())
            return {r.name for r in stub.ListRules(rules_pb2.ListRulesRequest()).rules}

    assert names() == {"unsafe-code", "watch-5", "calm-down"}
    assert names(rules_file=other) == {"only-this"}


def test_caps_per_request_and_per_stream(tmp_path: Path, capsys) -> None:
    """Over the wire, with tiny caps: a long request's stored trace keeps the first tokens and
    says how many it dropped (the API and `traces show`); a stream opening more requests than
    allowed gets RESOURCE_EXHAUSTED naming the setting, and its open requests carry on."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    with running_sidecar(tmp_path / "data", sae_path=build_sae(tmp_path / "sae"),
                         rules_file=rules, model_name="tiny-test", max_tokens_per_request=3,
                         max_open_requests=1) as sidecar:
        drive = StreamDriver(sidecar.channel())
        drive.hello()
        assert drive.step(step=1, started=[start("long")], rows=rows({}, {}), spans=[
            monitor_pb2.RowSpan(request_tag="long", row_start=0, positions=[0, 1],
                                token_ids=[1, 2], prefill=True)]).HasField("verdicts")
        refused = drive.step(step=2, started=[start("other")])
        assert (refused.error.code, refused.error.field) == ("RESOURCE_EXHAUSTED", "started")
        assert "LATENTGUARD_MAX_OPEN_REQUESTS (1)" in refused.error.message
        for p in range(2, 10):
            reply = drive.step(step=p + 1, rows=rows({3: 9.0} if p == 9 else {}), spans=[
                monitor_pb2.RowSpan(request_tag="long", row_start=0, positions=[p],
                                    token_ids=[p])])
            assert reply.HasField("verdicts")
        assert [v.rule for v in reply.verdicts.verdicts] == ["unsafe-code"]  # past the cap
        drive.step(step=20, finished=[monitor_pb2.RequestEnd(request_tag="long",
                                                             completion_tokens=8)])
        drive.close()
        traces = traces_pb2_grpc.TracesStub(sidecar.channel())
        listed = traces.ListTraces(traces_pb2.ListTracesRequest()).traces
        for _ in range(100):
            if listed:
                break
            import time

            time.sleep(0.05)
            listed = traces.ListTraces(traces_pb2.ListTracesRequest()).traces
        assert [t.request_tag for t in listed] == ["long"]
        trace = traces.GetTrace(traces_pb2.GetTraceRequest(id=listed[0].id))
        assert [t.position for t in trace.tokens] == [0, 1, 2]
        assert (trace.tokens_dropped, trace.hits_dropped) == (7, 0)
        assert trace.blocked_by == "unsafe-code" and trace.completion_tokens == 8
        assert listed[0].tokens_dropped == 7  # listings say so too
        assert cli(["traces", "show", trace.id, "--target", sidecar.target]) == 0
        assert "truncated: 7 more tokens and 0 more hits" in capsys.readouterr().out


END_RULES = """\
rules:
  - name: mean-9
    severity: medium
    check: end
    when: {feature: 9, threshold: 1.0, window: {agg: mean}}
policies:
  - {name: default, rules: ["*"]}
"""


def test_end_rules_alert_once_when_the_request_ends(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(END_RULES)
    with running_sidecar(tmp_path / "data", sae_path=build_sae(tmp_path / "sae"),
                         rules_file=rules, model_name="tiny-test") as sidecar:
        drive = StreamDriver(sidecar.channel())
        drive.hello()
        # The prompt's high values are out of the rule's scope (generation).
        drive.step(step=1, started=[start("E"), start("F"), start("G")],
                   spans=[monitor_pb2.RowSpan(request_tag=t, row_start=i, positions=[0],
                                              token_ids=[1], prefill=True)
                          for i, t in enumerate("EFG")],
                   rows=rows({9: 50.0}, {9: 50.0}, {9: 50.0}))
        for step, (e, f, g) in enumerate([(2.0, 2.0, 3.0), (0.0, 0.0, 0.0), (2.0, 0.0, 0.0)],
                                         start=2):
            reply = drive.step(step=step, spans=[
                monitor_pb2.RowSpan(request_tag=t, row_start=i, positions=[step - 1],
                                    token_ids=[2]) for i, t in enumerate("EFG")],
                rows=rows({9: e}, {9: f}, {9: g}))
            assert list(reply.verdicts.verdicts) == []  # an end rule never blocks or steers
        traces = traces_pb2_grpc.TracesStub(sidecar.channel())
        # E: mean 4/3 > 1 fires; F: mean 2/3 does not. G is cut off by the stream's end and
        # is checked on what was seen (mean 1.0, not above 1.0: no hit).
        drive.step(step=5, finished=[monitor_pb2.RequestEnd(request_tag="E"),
                                     monitor_pb2.RequestEnd(request_tag="F")])
        drive.close()
        sidecar.run(sidecar.sidecar.writer.flush())
        listed = traces.ListTraces(traces_pb2.ListTracesRequest()).traces
        by_tag = {t.request_tag: t for t in listed}
        for tag in "FG":  # stored (LATENTGUARD_TRACE_STORE is "all" by default), no hit
            assert tag not in by_tag or not traces.GetTrace(
                traces_pb2.GetTraceRequest(id=by_tag[tag].id)).hits
        flagged = traces.ListTraces(traces_pb2.ListTracesRequest(rule="mean-9")).traces
        assert [t.request_tag for t in flagged] == ["E"]
        e = traces.GetTrace(traces_pb2.GetTraceRequest(id=flagged[0].id))
        assert [(h.rule, h.position) for h in e.hits] == [("mean-9", 3)]
        assert e.hits[0].score == pytest.approx(4 / 3)
        assert "at the end of the request" in e.hits[0].explanation
        alerts = traces.StreamAlerts(traces_pb2.StreamAlertsRequest(after_id="0"))
        first = next(alerts)
        alerts.cancel()
        assert first.hit.rule == "mean-9" and first.request_tag == "E"
