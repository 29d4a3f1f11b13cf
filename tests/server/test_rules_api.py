"""The Rules service end to end over a real gRPC channel, and its CLI."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from latentguard.cli.main import main as cli
from latentguard.v1 import common_pb2, rules_pb2, rules_pb2_grpc
from tests.server.helpers import running_sidecar, signal_rule

PACK = """\
rules:
  - name: unsafe-code
    description: the unsafe code feature fires
    severity: high
    when: {feature: 3, threshold: 2.0, window: {size: 4, agg: mean}}
    action: {type: block}
  - name: watch
    when:
      any:
        - {feature: 1, threshold: 0.5}
        - {feature: 2, op: ">=", threshold: 1.5, consecutive: 2}
policies:
  - name: strict
    rules: [unsafe-code, watch]
    mode: sync
    on_failure: closed
"""


@pytest.fixture
def sidecar(tmp_path: Path):
    with running_sidecar(tmp_path / "data") as running:
        yield running


def violations(err: grpc.RpcError) -> list[tuple[str, str]]:
    status = rpc_status.from_call(err)
    out = []
    for detail in status.details:
        bad = error_details_pb2.BadRequest()
        detail.Unpack(bad)
        out += [(v.field, v.description) for v in bad.field_violations]
    return out


def test_put_get_list_versions_and_conflict(sidecar) -> None:
    stub = rules_pb2_grpc.RulesStub(sidecar.channel())
    created = stub.PutRule(rules_pb2.PutRuleRequest(rule=signal_rule("r1"), expected_version=0))
    assert created.version == 1 and created.enabled
    got = stub.GetRule(rules_pb2.GetRuleRequest(name="r1"))
    assert got.when.signal.feature == 3 and got.severity == common_pb2.SEVERITY_HIGH
    updated = stub.PutRule(rules_pb2.PutRuleRequest(rule=signal_rule("r1", threshold=5),
                                                    expected_version=1))
    assert updated.version == 2
    with pytest.raises(grpc.RpcError) as err:
        stub.PutRule(rules_pb2.PutRuleRequest(rule=signal_rule("r1"), expected_version=1))
    assert err.value.code() == grpc.StatusCode.ABORTED
    listed = stub.ListRules(rules_pb2.ListRulesRequest())
    assert [r.name for r in listed.rules] == ["r1"] and listed.revision == 2
    assert listed.rules[0].when.signal.threshold == 5


def test_invalid_rules_name_field_and_reason(sidecar) -> None:
    stub = rules_pb2_grpc.RulesStub(sidecar.channel())
    bad = signal_rule("Bad Name")
    with pytest.raises(grpc.RpcError) as err:
        stub.PutRule(rules_pb2.PutRuleRequest(rule=bad))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(err.value)[0][0] == "rule.name"

    window = signal_rule("w")
    window.when.signal.window.size = 3
    window.when.signal.window.agg = rules_pb2.AGGREGATION_COUNT  # count needs `above`
    with pytest.raises(grpc.RpcError) as err:
        stub.PutRule(rules_pb2.PutRuleRequest(rule=window))
    field, problem = violations(err.value)[0]
    assert field.startswith("rule.when") and "above" in problem

    steer = signal_rule("s")
    steer.action.type = common_pb2.ACTION_TYPE_STEER  # steer needs a steer spec
    with pytest.raises(grpc.RpcError) as err:
        stub.PutRule(rules_pb2.PutRuleRequest(rule=steer))
    assert violations(err.value)[0][0] == "rule.action"

    with pytest.raises(grpc.RpcError) as err:
        stub.GetRule(rules_pb2.GetRuleRequest(name="nope"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    # The server keeps serving after bad input.
    assert stub.ListRules(rules_pb2.ListRulesRequest()).rules == []


def test_validate_yaml_reports_line_and_field(sidecar) -> None:
    stub = rules_pb2_grpc.RulesStub(sidecar.channel())
    ok = stub.ValidateRule(rules_pb2.ValidateRuleRequest(yaml=PACK, source="pack.yaml"))
    assert ok.valid and [r.name for r in ok.rules] == ["unsafe-code", "watch"]
    broken = PACK.replace("threshold: 2.0", "treshold: 2.0")
    resp = stub.ValidateRule(rules_pb2.ValidateRuleRequest(yaml=broken, source="pack.yaml"))
    assert not resp.valid
    assert {(p.line, p.field) for p in resp.problems} >= {(5, "rules[0].when.threshold")}
    assert any("treshold" in p.problem for p in resp.problems)


def test_policies_reference_existing_rules(sidecar) -> None:
    stub = rules_pb2_grpc.RulesStub(sidecar.channel())
    with pytest.raises(grpc.RpcError) as err:
        stub.PutPolicy(rules_pb2.PutPolicyRequest(
            policy=rules_pb2.Policy(name="p", rules=["missing"])))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(err.value)[0][0] == "policy.rules[0]"
    stub.PutRule(rules_pb2.PutRuleRequest(rule=signal_rule("r1")))
    p = stub.PutPolicy(rules_pb2.PutPolicyRequest(policy=rules_pb2.Policy(
        name="p", rules=["r1"], mode=rules_pb2.MONITOR_MODE_SYNC)))
    assert p.version == 1 and p.mode == rules_pb2.MONITOR_MODE_SYNC and p.monitoring
    with pytest.raises(grpc.RpcError) as err:
        stub.DeleteRule(rules_pb2.DeleteRuleRequest(name="r1"))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    stub.DeletePolicy(rules_pb2.DeletePolicyRequest(name="p"))
    stub.DeleteRule(rules_pb2.DeleteRuleRequest(name="r1"))
    assert stub.ListPolicies(rules_pb2.ListPoliciesRequest()).policies == []


def test_change_reaches_the_runtime_within_a_second(sidecar) -> None:
    stub = rules_pb2_grpc.RulesStub(sidecar.channel())
    stub.PutRule(rules_pb2.PutRuleRequest(rule=signal_rule("live")))
    deadline = time.monotonic() + 1.0
    while "live" not in sidecar.sidecar.runtime.rules:
        assert time.monotonic() < deadline, "runtime did not reload within 1 s"
        time.sleep(0.02)


def test_cli_rules_roundtrip(sidecar, tmp_path: Path, capsys) -> None:
    pack = tmp_path / "pack.yaml"
    pack.write_text(PACK)
    target = ["--target", sidecar.target]
    assert cli(["rules", "validate", str(pack)]) == 0
    assert cli(["rules", "apply", str(pack), *target]) == 0
    out = capsys.readouterr().out
    assert "rule unsafe-code: version 1" in out and "policy strict: version 1" in out
    assert cli(["rules", "apply", str(pack), *target]) == 0
    assert "rule unsafe-code: version 2" in capsys.readouterr().out
    assert cli(["rules", "list", *target]) == 0
    out = capsys.readouterr().out
    assert "unsafe-code" in out and "strict" in out and "sync" in out
    assert cli(["rules", "delete", "watch", *target]) == 1  # still used by policy strict
    assert "strict" in capsys.readouterr().err
    assert cli(["rules", "delete", "strict", "--policy", *target]) == 0
    assert cli(["rules", "delete", "watch", *target]) == 0

    bad = tmp_path / "bad.yaml"
    bad.write_text(PACK.replace("severity: high", "severity: urgent"))
    assert cli(["rules", "validate", str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"{bad}:4:" in err and "severity" in err


def test_sidecars_sharing_a_redis_see_each_others_changes(tmp_path: Path,
                                                          external_redis: str) -> None:
    shared = {"redis_url": external_redis, "redis_prefix": "fleet"}
    with running_sidecar(tmp_path / "one", **shared) as one, \
            running_sidecar(tmp_path / "two", **shared) as two:
        rules_pb2_grpc.RulesStub(one.channel()).PutRule(
            rules_pb2.PutRuleRequest(rule=signal_rule("fleet-rule")))
        deadline = time.monotonic() + 1.0
        while "fleet-rule" not in two.sidecar.runtime.rules:
            assert time.monotonic() < deadline, "second sidecar did not reload within 1 s"
            time.sleep(0.02)
        got = rules_pb2_grpc.RulesStub(two.channel()).GetRule(
            rules_pb2.GetRuleRequest(name="fleet-rule"))
        assert got.version == 1


def test_invalid_policy_names_the_field(sidecar) -> None:
    stub = rules_pb2_grpc.RulesStub(sidecar.channel())
    with pytest.raises(grpc.RpcError) as err:
        stub.PutPolicy(rules_pb2.PutPolicyRequest(policy=rules_pb2.Policy(
            name="p", rules=["*", "extra"])))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(err.value)[0][0] == "policy.rules"


def test_reflection_lists_the_services(sidecar) -> None:
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    services = set(ProtoReflectionDescriptorDatabase(sidecar.channel()).get_services())
    assert {"latentguard.v1.Rules", "latentguard.v1.Traces", "latentguard.v1.Monitor",
            "latentguard.v1.Features", "grpc.health.v1.Health"} <= services
