"""Bounded work and right codes for bad input (issue 15, items 3 and 5), over real channels:
each case answers INVALID_ARGUMENT (or NOT_FOUND) naming the field, never INTERNAL, UNKNOWN or
RESOURCE_EXHAUSTED, and a hostile rule pack does not stall the Monitor stream."""

from __future__ import annotations

import math
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from latentguard.v1 import (
    common_pb2,
    features_pb2,
    features_pb2_grpc,
    monitor_pb2,
    monitor_pb2_grpc,
    rules_pb2,
    rules_pb2_grpc,
    traces_pb2,
    traces_pb2_grpc,
)
from tests.server.fixtures import RULES, StreamDriver, build_sae, rows
from tests.server.helpers import RunningSidecar, running_sidecar, signal_rule, violations

BAD = grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture
def sidecar(tmp_path: Path) -> Iterator[RunningSidecar]:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    # vllm_url makes Generate check its arguments (nothing listens there; no call gets that far).
    with running_sidecar(tmp_path / "data", sae_path=build_sae(tmp_path / "sae"),
                         rules_file=rules, model_name="tiny-test",
                         vllm_url="http://127.0.0.1:9") as running:
        yield running


def refused(call: Callable[[], Any], code: grpc.StatusCode = BAD) -> list[str]:
    """Runs a call that must fail with `code`; returns the BadRequest fields it names."""
    with pytest.raises(grpc.RpcError) as info:
        result = call()
        if isinstance(result, Iterator):
            next(result)
    err = info.value
    assert err.code() == code, (err.code(), err.details())  # type: ignore[attr-defined]
    return [f for f, _ in violations(err)]


def start(tag: str) -> monitor_pb2.RequestStart:
    return monitor_pb2.RequestStart(request_tag=tag, prompt_tokens=1)


def span(tag: str, row: int, positions: list[int], prefill: bool = True) -> monitor_pb2.RowSpan:
    return monitor_pb2.RowSpan(request_tag=tag, row_start=row, positions=positions,
                               token_ids=[1] * len(positions), prefill=prefill)


def test_step_errors_name_the_field_and_apply_nothing(sidecar: RunningSidecar) -> None:
    drive = StreamDriver(sidecar.channel())
    drive.hello()
    # The second span is empty: refused, and A (started by this step) was not opened.
    reply = drive.step(step=1, started=[start("A")],
                       spans=[span("A", 0, [0]), span("A", 1, [])], rows=rows({}, {}))
    assert (reply.error.code, reply.error.field) == ("INVALID_ARGUMENT", "spans[1].positions")
    reply = drive.step(step=2, spans=[span("A", 0, [1])], rows=rows({}))
    assert reply.error.field == "spans[0].request_tag"  # A is unknown: nothing was opened
    # Two RequestEnd for one tag in a step.
    assert drive.step(step=3, started=[start("B")]).HasField("verdicts")
    reply = drive.step(step=4, finished=[monitor_pb2.RequestEnd(request_tag="B"),
                                         monitor_pb2.RequestEnd(request_tag="B")])
    assert (reply.error.code, reply.error.field) == ("INVALID_ARGUMENT", "finished[1].request_tag")
    assert drive.step(step=5, finished=[monitor_pb2.RequestEnd(request_tag="B")]
                      ).HasField("verdicts")
    # A 10k-character tag is refused by length, its message short.
    reply = drive.step(step=6, started=[start("x" * 10_000)])
    assert reply.error.field == "started[0].request_tag" and len(reply.error.message) < 200
    drive.close()


def test_generate_refuses_non_finite_and_out_of_range(sidecar: RunningSidecar) -> None:
    stub = monitor_pb2_grpc.MonitorStub(sidecar.channel())
    for temperature in (math.nan, math.inf, -1.0):
        assert refused(lambda t=temperature: stub.Generate(monitor_pb2.GenerateRequest(
            prompt="hi", temperature=t))) == ["temperature"]
    assert refused(lambda: stub.Generate(monitor_pb2.GenerateRequest(
        prompt="hi", max_tokens=10**6))) == ["max_tokens"]
    assert refused(lambda: stub.Generate(monitor_pb2.GenerateRequest(
        prompt="hi", top_k=1000))) == ["top_k"]


def test_traces_bad_input(sidecar: RunningSidecar) -> None:
    stub = traces_pb2_grpc.TracesStub(sidecar.channel())
    far = Timestamp(seconds=300_000_000_000)
    assert refused(lambda: stub.ListTraces(traces_pb2.ListTracesRequest(start_time=far))
                   ) == ["start_time"]
    assert refused(lambda: stub.ListTraces(traces_pb2.ListTracesRequest(rule="r" * 10_000))
                   ) == ["rule"]
    alerts = stub.StreamAlerts(traces_pb2.StreamAlertsRequest(
        after_id="99999999999999999999-0"))
    assert refused(lambda: alerts) == ["after_id"]
    # A 1 MB reviewer name, and a 10k-character id (NOT_FOUND-style checks quote it short).
    assert refused(lambda: stub.ReviewTrace(traces_pb2.ReviewTraceRequest(
        id="0" * 25, label=traces_pb2.REVIEW_LABEL_TRUE_POSITIVE, reviewer="r" * 1_000_000))
    ) == ["reviewer"]
    with pytest.raises(grpc.RpcError) as info:
        stub.GetTrace(traces_pb2.GetTraceRequest(id="z" * 10_000))
    assert info.value.code() == BAD and len(info.value.details()) < 200  # type: ignore[attr-defined]


def test_list_features_refuses_a_negative_page_token(sidecar: RunningSidecar) -> None:
    stub = features_pb2_grpc.FeaturesStub(sidecar.channel())
    assert refused(lambda: stub.ListFeatures(features_pb2.ListFeaturesRequest(page_token="-5"))
                   ) == ["page_token"]


def test_put_rule_names_the_field_the_sae_lacks(sidecar: RunningSidecar) -> None:
    stub = rules_pb2_grpc.RulesStub(sidecar.channel())
    put = stub.PutRule
    assert refused(lambda: put(rules_pb2.PutRuleRequest(rule=signal_rule("far", 10_000)))
                   ) == ["rule.when.signal.feature"]
    probe = signal_rule("probe")
    probe.when.signal.ClearField("feature")
    probe.when.signal.probe = "nope"
    assert refused(lambda: put(rules_pb2.PutRuleRequest(rule=probe))
                   ) == ["rule.when.signal.probe"]
    steer = signal_rule("steer")
    steer.action.type = common_pb2.ACTION_TYPE_STEER
    steer.action.steer.mode = common_pb2.STEER_MODE_ADD
    steer.action.steer.features.add(feature=10_000, value=1.0)
    assert refused(lambda: put(rules_pb2.PutRuleRequest(rule=steer))
                   ) == ["rule.action.steer.features[0].feature"]
    long = signal_rule("long")
    long.description = "d" * 100_000
    assert refused(lambda: put(rules_pb2.PutRuleRequest(rule=long))) == ["rule.description"]
    with pytest.raises(grpc.RpcError) as info:
        stub.GetRule(rules_pb2.GetRuleRequest(name="n" * 10_000))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]


def test_validate_rule_names_the_field_the_sae_lacks(sidecar: RunningSidecar) -> None:
    """ValidateRule answers problems as data: the same fields PutRule names, from the engine's
    own error (no message matching), nested conditions included; a YAML pack's problems name
    the field as the pack wrote it, with its line."""
    stub = rules_pb2_grpc.RulesStub(sidecar.channel())

    def problems(**input: Any) -> list[tuple[str, int]]:
        answer = stub.ValidateRule(rules_pb2.ValidateRuleRequest(**input))
        assert not answer.valid
        return [(p.field, p.line) for p in answer.problems]

    def signal(feature: int) -> rules_pb2.Condition:
        return rules_pb2.Condition(signal=rules_pb2.Signal(feature=feature, threshold=1))

    nested = signal_rule("nested")
    nested.when.CopyFrom(rules_pb2.Condition(any=rules_pb2.Conditions(conditions=[
        signal(1), rules_pb2.Condition(all=rules_pb2.Conditions(conditions=[
            signal(2), signal(32)]))])))  # D_SAE is 32
    assert problems(rule=nested) == [("rule.when.any[1].all[1].signal.feature", 0)]
    with pytest.raises(grpc.RpcError) as info:
        stub.PutRule(rules_pb2.PutRuleRequest(rule=nested))
    assert [f for f, _ in violations(info.value)] == ["rule.when.any[1].all[1].signal.feature"]
    probe = signal_rule("probe")
    probe.when.signal.ClearField("feature")
    probe.when.signal.probe = "nope"
    assert problems(rule=probe) == [("rule.when.signal.probe", 0)]
    steer = signal_rule("steer")
    steer.action.type = common_pb2.ACTION_TYPE_STEER
    steer.action.steer.mode = common_pb2.STEER_MODE_ADD
    steer.action.steer.features.add(feature=1, value=1.0)
    steer.action.steer.features.add(feature=99, value=1.0)
    assert problems(rule=steer) == [("rule.action.steer.features[1].feature", 0)]
    pack = ("rules:\n"
            "  - {name: fine, when: {feature: 3, threshold: 1}}\n"
            "  - name: far\n"
            "    when:\n"
            "      all:\n"
            "        - {feature: 1, threshold: 1}\n"
            "        - {probe: nope, threshold: 1}\n")
    assert problems(yaml=pack, source="p.yaml") == [("rules[1].when.all[1].probe", 7)]
    steer_pack = ("rules:\n"
                  "  - name: s\n"
                  "    when: {feature: 3, threshold: 1}\n"
                  "    action:\n"
                  "      type: steer\n"
                  "      steer: {mode: add, features: [{feature: 40, value: 1}]}\n")
    assert problems(yaml=steer_pack) == [("rules[0].action.steer.features[0].feature", 6)]


def test_undecodable_unary_bodies(sidecar: RunningSidecar) -> None:
    channel = sidecar.channel()
    for method in ("/latentguard.v1.Rules/ListRules", "/latentguard.v1.Traces/GetTrace",
                   "/latentguard.v1.Traces/StreamAlerts"):
        stream = method.endswith("StreamAlerts")
        make = channel.unary_stream if stream else channel.unary_unary
        call = make(method, request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as info:
            reply = call(b"\xff\xff\xff\xff")
            if stream:
                list(reply)
        assert info.value.code() == BAD, method  # type: ignore[attr-defined]


BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
    f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
    for i in range(8))


def big_pack(n: int) -> str:
    return "rules:\n" + "".join(
        f"  - name: r{i}\n    description: rule number {i} of a large pack\n"
        f"    when: {{feature: {i % 32}, threshold: 1.5}}\n" for i in range(n))


def test_hostile_and_large_packs_do_not_stall_the_stream(sidecar: RunningSidecar) -> None:
    stub = rules_pb2_grpc.RulesStub(sidecar.channel())
    t0 = time.perf_counter()
    answer = stub.ValidateRule(rules_pb2.ValidateRuleRequest(yaml=BOMB))
    assert time.perf_counter() - t0 < 1.0
    assert not answer.valid and answer.problems[0].line == 1
    assert "aliases" in answer.problems[0].problem
    too_big = stub.ValidateRule(rules_pb2.ValidateRuleRequest(yaml=big_pack(20_000)))
    assert not too_big.valid and "bytes" in too_big.problems[0].problem

    drive = StreamDriver(sidecar.channel())
    drive.hello()
    drive.step(step=1, started=[start("S")])

    def step_ms(n: int) -> float:
        t = time.perf_counter()
        reply = drive.step(step=n, spans=[span("S", 0, [n], prefill=False)], rows=rows({}))
        assert reply.HasField("verdicts"), reply
        return (time.perf_counter() - t) * 1000

    baseline = statistics.median(step_ms(n) for n in range(2, 12))
    pack = big_pack(7_000)  # about 0.6 MB, a few seconds of parsing
    assert len(pack) < 1 << 20
    done = threading.Event()
    result: list[rules_pb2.ValidateRuleResponse] = []

    def validate() -> None:
        result.append(stub.ValidateRule(rules_pb2.ValidateRuleRequest(yaml=pack)))
        done.set()

    worker = threading.Thread(target=validate)
    worker.start()
    time.sleep(0.05)
    latencies = []
    n = 100
    while not done.is_set() and n < 100_000:
        latencies.append(step_ms(n))
        n += 1
    worker.join(60)
    assert result and result[0].valid and len(result[0].rules) == 7_000
    assert len(latencies) > 5, "the pack validated too fast to measure anything"
    # Client and sidecar share this process's GIL here, so single steps still wait for the
    # parent-side part (models rebuilt, rules checked, a GC pass): the 95th percentile is held
    # to the 50 ms budget; the worst step is not yet (about 150-300 ms, see issue 15).
    p95 = statistics.quantiles(latencies, n=20)[-1]
    assert p95 - baseline < 50, (baseline, p95, max(latencies), len(latencies))
    drive.close()
