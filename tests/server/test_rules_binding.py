"""Rules bound to their SAE, with two SAEs on one store: rules written for SAE A are stored and
listed by a sidecar that loads SAE B, with the reason it does not apply them, and never applied
there; storing them next to B needs an explicit bind; the start-up pack replaces stale rules
only when asked."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from latentguard.monitors.errors import SAEMismatchError
from latentguard.monitors.rules import dump_rule_pack
from latentguard.monitors.sae import SAEIdentity, load_sae
from latentguard.v1 import common_pb2, monitor_pb2, rules_pb2, rules_pb2_grpc
from tests.server.fixtures import StreamDriver, build_sae, rows
from tests.server.helpers import RunningSidecar, running_sidecar, violations


def block_rule(name: str = "unsafe-code", feature: int = 3) -> rules_pb2.Rule:
    return rules_pb2.Rule(
        name=name, severity=common_pb2.SEVERITY_HIGH,
        when=rules_pb2.Condition(signal=rules_pb2.Signal(feature=feature, threshold=1.0)),
        action=rules_pb2.Action(type=common_pb2.ACTION_TYPE_BLOCK))


def identity_proto(sae: SAEIdentity) -> rules_pb2.SAEIdentity:
    return rules_pb2.SAEIdentity(name=sae.name, hook=sae.hook, sha256=sae.sha256)


def verdicts(sidecar: RunningSidecar) -> dict[str, Any]:
    """One generated token on which both SAEs' feature 3 fires (A's reads dimension 3, B's
    dimension 4): the verdicts of the step."""
    drive = StreamDriver(sidecar.channel())
    drive.hello()
    reply = drive.step(
        step=1, started=[monitor_pb2.RequestStart(request_tag="r", prompt_tokens=2)],
        spans=[monitor_pb2.RowSpan(request_tag="r", row_start=0, positions=[2],
                                   token_ids=[13])],
        rows=rows({3: 9.0, 4: 9.0}))
    drive.close()
    return {v.request_tag: v for v in reply.verdicts.verdicts}


def wait_for(check: Any, what: str) -> None:
    deadline = time.monotonic() + 5
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


@pytest.fixture
def saes(tmp_path: Path) -> tuple[Path, Path]:
    return (build_sae(tmp_path / "a" / "sae", model_name="tiny-a"),
            build_sae(tmp_path / "b" / "sae", shift=1, model_name="tiny-b"))


@pytest.fixture
def fleet(tmp_path: Path, external_redis: str, saes: tuple[Path, Path]
          ) -> Iterator[tuple[RunningSidecar, RunningSidecar]]:
    """Sidecar A (SAE A) and sidecar B (SAE B) sharing one Redis."""
    shared = {"redis_url": external_redis, "redis_prefix": f"bind{time.monotonic_ns()}"}
    with running_sidecar(tmp_path / "a" / "data", sae_path=saes[0], **shared) as a, \
            running_sidecar(tmp_path / "b" / "data", sae_path=saes[1], **shared) as b:
        yield a, b


def test_rules_for_sae_a_are_listed_inactive_and_never_applied_by_sae_b(
        fleet: tuple[RunningSidecar, RunningSidecar], saes: tuple[Path, Path],
        caplog: pytest.LogCaptureFixture) -> None:
    a, b = fleet
    id_a, id_b = load_sae(saes[0]).identity, load_sae(saes[1]).identity
    assert not id_a.same_sae(id_b)
    caplog.set_level(logging.WARNING, logger="latentguard.server.runtime")
    stored = rules_pb2_grpc.RulesStub(a.channel()).PutRule(
        rules_pb2.PutRuleRequest(rule=block_rule()))
    assert stored.sae == identity_proto(id_a)  # bound to the SAE it was checked against
    wait_for(lambda: "unsafe-code" in b.sidecar.runtime.inactive, "B did not reload")

    on_b = rules_pb2_grpc.RulesStub(b.channel())
    listed = on_b.ListRules(rules_pb2.ListRulesRequest())
    assert listed.sae == identity_proto(id_b)
    (rule,) = listed.rules
    assert rule.enabled and rule.sae == identity_proto(id_a)
    assert str(id_a) in rule.inactive_reason and str(id_b) in rule.inactive_reason
    got = on_b.GetRule(rules_pb2.GetRuleRequest(name="unsafe-code"))
    assert got.inactive_reason == rule.inactive_reason
    assert rules_pb2_grpc.RulesStub(a.channel()).GetRule(
        rules_pb2.GetRuleRequest(name="unsafe-code")).inactive_reason == ""
    # The log says so once, naming both SAEs.
    said = [r.getMessage() for r in caplog.records if "unsafe-code is not applied" in
            r.getMessage()]
    assert len(said) == 1 and str(id_a) in said[0] and str(id_b) in said[0]

    assert "unsafe-code" not in b.sidecar.runtime.rules
    assert verdicts(b) == {}  # never applied
    assert verdicts(a)["r"].kind == monitor_pb2.VERDICT_KIND_BLOCK


def test_putting_a_rule_for_another_sae_is_refused_unless_bound(
        fleet: tuple[RunningSidecar, RunningSidecar], saes: tuple[Path, Path]) -> None:
    a, b = fleet
    id_a, id_b = load_sae(saes[0]).identity, load_sae(saes[1]).identity
    rule = block_rule()
    rule.sae.CopyFrom(identity_proto(id_a))
    on_b = rules_pb2_grpc.RulesStub(b.channel())
    with pytest.raises(grpc.RpcError) as err:
        on_b.PutRule(rules_pb2.PutRuleRequest(rule=rule))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    ((field, problem),) = violations(err.value)
    assert field == "rule.sae" and "'unsafe-code'" in problem
    assert str(id_a) in problem and str(id_b) in problem
    assert on_b.ListRules(rules_pb2.ListRulesRequest()).rules == []

    stored = on_b.PutRule(rules_pb2.PutRuleRequest(rule=rule, bind_to_current_sae=True))
    assert stored.sae == identity_proto(id_b)
    wait_for(lambda: "unsafe-code" in b.sidecar.runtime.rules, "B did not apply it")
    wait_for(lambda: "unsafe-code" in a.sidecar.runtime.inactive, "A still applies it")
    assert verdicts(b)["r"].kind == monitor_pb2.VERDICT_KIND_BLOCK
    assert verdicts(a) == {}


def test_validating_a_pack_for_another_sae_names_its_sae_line_and_rules(
        fleet: tuple[RunningSidecar, RunningSidecar], saes: tuple[Path, Path]) -> None:
    _, b = fleet
    id_a, id_b = load_sae(saes[0]).identity, load_sae(saes[1]).identity
    text = dump_rule_pack({"sae": id_a.model_dump(), "rules": [
        {"name": "one", "when": {"feature": 3, "threshold": 1.0}},
        {"name": "two", "when": {"feature": 5, "threshold": 1.0}}]})
    on_b = rules_pb2_grpc.RulesStub(b.channel())
    resp = on_b.ValidateRule(rules_pb2.ValidateRuleRequest(yaml=text, source="a.yaml"))
    assert not resp.valid
    ((problem),) = resp.problems
    assert (problem.field, problem.line) == ("sae", 1)
    assert "rules 'one', 'two' were written for SAE" in problem.problem
    assert str(id_a) in problem.problem and str(id_b) in problem.problem

    resp = on_b.ValidateRule(rules_pb2.ValidateRuleRequest(yaml=text, source="a.yaml",
                                                           bind_to_current_sae=True))
    assert resp.valid and [r.sae for r in resp.rules] == [identity_proto(id_b)] * 2


PACK_FOR_A = """\
rules:
  - {name: unsafe-code, when: {feature: 3, threshold: 1.0}, action: {type: block}}
policies:
  - {name: strict, rules: [unsafe-code], mode: sync, on_failure: closed}
"""


def shipped_pack(sae: Path) -> None:
    """The pack beside SAE B, written for it, naming rules and a policy already stored."""
    (sae / "rules.yaml").write_text(dump_rule_pack({
        "sae": load_sae(sae).identity.model_dump(),
        "rules": [{"name": "unsafe-code", "when": {"feature": 2, "threshold": 1.0},
                   "action": {"type": "block"}},
                  {"name": "new-one", "when": {"feature": 6, "threshold": 1.0}}],
        "policies": [{"name": "strict", "rules": ["*"], "mode": "sync"}]}))


def test_the_shipped_pack_replaces_stale_rules_only_when_asked(
        tmp_path: Path, saes: tuple[Path, Path], caplog: pytest.LogCaptureFixture) -> None:
    data = tmp_path / "one-store"  # the embedded store keeps its data between sidecars
    first = tmp_path / "examples.yaml"
    first.write_text(PACK_FOR_A)
    with running_sidecar(data, sae_path=saes[0], rules_file=first) as a:
        stored = rules_pb2_grpc.RulesStub(a.channel()).GetRule(
            rules_pb2.GetRuleRequest(name="unsafe-code"))
        assert stored.sae.sha256 == load_sae(saes[0]).identity.sha256

    shipped_pack(saes[1])
    caplog.set_level(logging.WARNING, logger="latentguard.server.packs")
    with running_sidecar(data, sae_path=saes[1]) as b:
        stub = rules_pb2_grpc.RulesStub(b.channel())
        rules = {r.name: r for r in stub.ListRules(rules_pb2.ListRulesRequest()).rules}
        assert rules["unsafe-code"].inactive_reason and not rules["new-one"].inactive_reason
        assert list(stub.GetPolicy(rules_pb2.GetPolicyRequest(name="strict")).rules) == [
            "unsafe-code"]
        assert verdicts(b) == {}  # A's rule kept, and not applied
    assert any("LATENTGUARD_REPLACE_STALE_RULES" in r.getMessage() for r in caplog.records)

    with running_sidecar(data, sae_path=saes[1], replace_stale_rules=True) as b:
        stub = rules_pb2_grpc.RulesStub(b.channel())
        rules = {r.name: r for r in stub.ListRules(rules_pb2.ListRulesRequest()).rules}
        assert not rules["unsafe-code"].inactive_reason
        assert rules["unsafe-code"].when.signal.feature == 2
        assert list(stub.GetPolicy(rules_pb2.GetPolicyRequest(name="strict")).rules) == ["*"]
        assert verdicts(b)["r"].rule == "unsafe-code"


def test_rules_stored_without_an_sae_are_not_applied(tmp_path: Path,
                                                     saes: tuple[Path, Path]) -> None:
    with running_sidecar(tmp_path / "data", sae_path=saes[1]) as b:
        spec = {"name": "legacy", "when": {"signal": {"feature": 3, "threshold": 1.0}},
                "action": {"type": "block"}}
        b.run(b.sidecar.store.rules.put("legacy", spec))
        wait_for(lambda: "legacy" in b.sidecar.runtime.inactive, "B did not reload")
        got = rules_pb2_grpc.RulesStub(b.channel()).GetRule(
            rules_pb2.GetRuleRequest(name="legacy"))
        assert "records no SAE identity" in got.inactive_reason
        assert verdicts(b) == {}


def test_a_start_up_pack_for_another_sae_stops_the_start(tmp_path: Path,
                                                          saes: tuple[Path, Path]) -> None:
    id_a, id_b = load_sae(saes[0]).identity, load_sae(saes[1]).identity
    pack = tmp_path / "for-a.yaml"
    pack.write_text(dump_rule_pack({"sae": id_a.model_dump(), "rules": [
        {"name": "unsafe-code", "when": {"feature": 3, "threshold": 1.0}}]}))
    with pytest.raises(SAEMismatchError) as err, \
            running_sidecar(tmp_path / "data", sae_path=saes[1], rules_file=pack):
        pass
    message = str(err.value)
    assert message.startswith(f"{pack}:1: sae: rule 'unsafe-code' was written for SAE")
    assert str(id_a) in message and str(id_b) in message
