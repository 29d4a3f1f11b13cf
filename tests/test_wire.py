"""latentguard.wire: enum tables derived from the protos agree with the rule schema, and every
converter round-trips."""

from __future__ import annotations

import typing
import warnings

import pytest
import torch

from latentguard import wire
from latentguard.monitors.errors import RuleValidationError, ShapeError
from latentguard.monitors.rules import Policy, RuleHit, Steer, load_rule_pack, schema
from latentguard.server import records
from latentguard.v1 import common_pb2, rules_pb2


@pytest.mark.parametrize(("table", "literal"), [
    (wire.SEVERITY, schema.Severity), (wire.SCOPE, schema.Scope),
    (wire.ACTION, schema.Action.model_fields["type"].annotation),
    (wire.STEER_MODE, schema.Steer.model_fields["mode"].annotation),
    (wire.AGG, schema.Window.model_fields["agg"].annotation),
    (wire.OP, schema.Signal.model_fields["op"].annotation),
    (wire.MODE, Policy.model_fields["mode"].annotation),
    (wire.FAILURE, Policy.model_fields["on_failure"].annotation),
    (wire.STATUS, records.TraceStatus), (wire.LABEL, records.ReviewLabel),
])
def test_enum_tables_match_the_schema(table: wire.EnumTable, literal: object) -> None:
    assert set(table.names) == set(typing.get_args(literal))
    for name in table.names:
        assert table.name(table[name]) == name
    assert table.name(0) is None and table.name(99).startswith("<unknown")


def test_severity_order_is_the_proto_order() -> None:
    assert wire.SEVERITY.names == schema.SEVERITY_ORDER


PACK = """\
rules:
  - name: r
    severity: high
    scope: both
    when:
      any:
        - {feature: 3, threshold: 2.0, op: ">=", window: {size: 4, agg: count, above: 1.0}}
        - {probe: deception, threshold: 0.5, consecutive: 2}
    action: {type: steer, steer: {mode: clamp, features: [{feature: 7, value: 0.5}], tokens: 4}}
policies:
  - {name: strict, rules: [r], mode: sync, on_failure: closed, timeout_ms: 300}
"""


def test_rules_and_policies_round_trip() -> None:
    pack = load_rule_pack(PACK)
    rule, policy = pack.rules[0], pack.policies[0]
    assert type(rule).model_validate(wire.rule_dict(wire.rule_proto(rule))) == rule
    assert Policy.model_validate(wire.policy_dict(wire.policy_proto(policy))) == policy


def test_end_rules_and_whole_request_windows_round_trip() -> None:
    rule = load_rule_pack("""\
rules:
  - name: lies
    check: end
    when: {probe: deception, threshold: 0.5, window: {agg: mean}}
""").rules[0]
    msg = wire.rule_proto(rule)
    assert msg.check == rules_pb2.CHECK_END and msg.when.signal.window.size == 0
    assert type(rule).model_validate(wire.rule_dict(msg)) == rule
    token = rule.model_copy(update={"check": "token"})
    assert wire.rule_proto(token).check == rules_pb2.CHECK_TOKEN


def test_steer_and_verdict_round_trip_and_refusals() -> None:
    steer = Steer.model_validate({"mode": "add", "features": [{"feature": 5, "value": 2.0}],
                                  "preserve_norm": True})
    assert wire.steer_model(wire.steer_proto(steer), "steer", 32) == steer
    verdict = wire.Verdict("t", "steer", "r", "why", steer)
    assert wire.verdict_model(wire.verdict_proto(verdict)) == verdict
    block = wire.Verdict("t", "block", "r", "why")
    assert wire.verdict_model(wire.verdict_proto(block)) == block
    with pytest.raises(RuleValidationError) as err:
        wire.steer_model(wire.steer_proto(steer), "started[0].steer", 4)
    assert err.value.field == "started[0].steer.features[0].feature"


def test_hits_keep_their_evidence_on_the_wire() -> None:
    hit = RuleHit.model_validate({
        "rule": "r", "severity": "high", "action": "block", "position": 3, "score": 2.5,
        "explanation": "x", "evidence": [{"signal": "feature 3", "position": 2, "value": 2.5}]})
    msg = wire.hit_proto(hit)
    assert (msg.rule, msg.position, msg.evidence[0].signal) == ("r", 3, "feature 3")
    assert msg.action == wire.ACTION["block"] and msg.severity == wire.SEVERITY["high"]


def test_rows_round_trip_and_refusals() -> None:
    rows = torch.randn(3, 8)
    msg = wire.rows_proto(rows)
    assert torch.equal(wire.rows_from_proto(msg, 8), rows)
    with pytest.raises(ShapeError, match="rows.shape"):
        wire.rows_from_proto(msg, 16)
    msg.data = msg.data[:-4]
    with pytest.raises(ShapeError, match="rows.data"):
        wire.rows_from_proto(msg, 8)
    bad = wire.rows_proto(torch.tensor([[float("nan")] * 8]))
    with pytest.raises(ShapeError, match="NaN"):
        wire.rows_from_proto(bad, 8)


def test_float32_rows_read_the_bytes_quietly_and_half_rows_convert() -> None:
    rows = torch.randn(4, 8)
    data = rows.numpy().tobytes()
    msg = common_pb2.Tensor(dtype=common_pb2.DTYPE_FLOAT32, shape=[4, 8], data=data)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a view of read-only bytes: torch says nothing
        got = wire.rows_from_proto(msg, 8)
    assert torch.equal(got, rows)
    for dtype, torch_dtype in ((common_pb2.DTYPE_FLOAT16, torch.float16),
                               (common_pb2.DTYPE_BFLOAT16, torch.bfloat16)):
        half = rows.to(torch_dtype)
        raw = half.view(torch.int16).numpy().tobytes()
        msg = common_pb2.Tensor(dtype=dtype, shape=[4, 8], data=raw)
        got = wire.rows_from_proto(msg, 8)
        assert got.dtype == torch.float32 and torch.equal(got, half.float())
