"""`latentguard rules apply` refuses a pack written for another SAE unless told to bind it,
`rules list` shows each rule's SAE and why the sidecar does not apply it, and `sae identity`
prints the `sae:` key of a pack."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from latentguard.cli.main import main as cli
from latentguard.monitors.rules import dump_rule_pack, load_rule_pack
from latentguard.monitors.sae import SAEIdentity, load_sae
from latentguard.v1 import rules_pb2, rules_pb2_grpc
from tests.server.fixtures import build_sae
from tests.server.helpers import RunningSidecar, running_sidecar


@pytest.fixture
def two(tmp_path: Path) -> Iterator[tuple[SAEIdentity, SAEIdentity, RunningSidecar]]:
    """SAE A's identity, and a sidecar loading SAE B (with B's identity)."""
    sae_a = build_sae(tmp_path / "a", model_name="tiny-a")
    sae_b = build_sae(tmp_path / "b", shift=1, model_name="tiny-b")
    with running_sidecar(tmp_path / "data", sae_path=sae_b) as b:
        yield load_sae(sae_a).identity, load_sae(sae_b).identity, b


def pack_for(sae: SAEIdentity, folder: Path) -> Path:
    path = folder / "pack.yaml"
    path.write_text(dump_rule_pack({
        "sae": sae.model_dump(),
        "rules": [{"name": "unsafe-code", "when": {"feature": 3, "threshold": 2.0},
                   "action": {"type": "block"}},
                  {"name": "watch", "when": {"feature": 5, "threshold": 1.0}}],
        "policies": [{"name": "strict", "rules": ["unsafe-code"], "mode": "sync"}]}))
    return path


def test_apply_refuses_a_pack_for_another_sae_then_binds_it(two, tmp_path: Path,
                                                             capsys) -> None:
    id_a, id_b, b = two
    pack = pack_for(id_a, tmp_path)
    target = ["--target", b.target]
    assert cli(["rules", "apply", str(pack), *target]) == 1
    err = capsys.readouterr().err
    assert f"{pack}:1: sae: rules 'unsafe-code', 'watch' were written for SAE {id_a}" in err
    assert f"this sidecar loads SAE {id_b}" in err
    assert f"{pack}: nothing applied" in err and "--bind-to-current-sae" in err
    stub = rules_pb2_grpc.RulesStub(b.channel())
    assert stub.ListRules(rules_pb2.ListRulesRequest()).rules == []
    assert stub.ListPolicies(rules_pb2.ListPoliciesRequest()).policies == []

    assert cli(["rules", "apply", str(pack), "--bind-to-current-sae", *target]) == 0
    out = capsys.readouterr().out
    assert "rule unsafe-code: version 1" in out and f"rules bound to SAE {id_b}" in out
    listed = stub.ListRules(rules_pb2.ListRulesRequest())
    assert {r.sae.sha256 for r in listed.rules} == {id_b.sha256}
    assert all(not r.inactive_reason for r in listed.rules)


def test_apply_binds_a_pack_that_names_no_sae_to_the_sidecars(two, tmp_path: Path,
                                                               capsys) -> None:
    _, id_b, b = two
    pack = tmp_path / "plain.yaml"
    pack.write_text("rules:\n  - {name: plain, when: {feature: 3, threshold: 1.0}}\n")
    assert cli(["rules", "apply", str(pack), "--target", b.target]) == 0
    assert f"rules bound to SAE {id_b}" in capsys.readouterr().out
    got = rules_pb2_grpc.RulesStub(b.channel()).GetRule(rules_pb2.GetRuleRequest(name="plain"))
    assert got.sae.sha256 == id_b.sha256


def test_list_shows_the_rules_sae_and_why_it_is_not_applied(two, capsys) -> None:
    id_a, id_b, b = two
    spec = load_rule_pack(dump_rule_pack({"sae": id_a.model_dump(), "rules": [
        {"name": "for-a", "when": {"feature": 3, "threshold": 1.0}}]})).rules[0]
    b.run(b.sidecar.store.rules.put("for-a", spec.model_dump(mode="json")))
    target = ["--target", b.target]
    assert cli(["rules", "list", *target]) == 0
    out = capsys.readouterr().out
    assert f"this sidecar's SAE: {id_b}" in " ".join(out.split())
    assert f"for-a is not applied: written for SAE {id_a}; this sidecar loads SAE {id_b}" in out
    assert cli(["rules", "list", "--json", *target]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["sae"]["sha256"] == id_b.sha256
    (rule,) = data["rules"]
    assert rule["sae"]["sha256"] == id_a.sha256 and str(id_a) in rule["inactiveReason"]


def test_sae_identity_prints_a_packs_sae_key(tmp_path: Path, capsys) -> None:
    sae = build_sae(tmp_path / "sae")
    assert cli(["sae", "identity", str(sae)]) == 0
    text = capsys.readouterr().out
    pack = load_rule_pack(text + "rules:\n  - {name: r, when: {feature: 1, threshold: 1.0}}\n")
    assert pack.sae == load_sae(sae).identity == pack.rules[0].sae
