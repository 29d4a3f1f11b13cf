"""Rules bound to their SAE: a pack's `sae:` given to its rules, and the checks a monitor runs
before it applies or stores a rule."""

from __future__ import annotations

import pytest

from latentguard.monitors.errors import RuleValidationError, SAEMismatchError
from latentguard.monitors.rules import (
    bind_pack,
    binding_problem,
    check_binding,
    dump_rule_pack,
    load_rule_pack,
)
from latentguard.monitors.sae import SAEIdentity

A = SAEIdentity(name="tiny", hook="blocks.1.hook_resid_post", sha256="0123456789abcdef")
B = SAEIdentity(name="gemma-3-270m", hook="blocks.9.hook_resid_post", sha256="fedcba9876543210")

PACK = """\
sae: {name: tiny, hook: blocks.1.hook_resid_post, sha256: 0123456789abcdef}
rules:
  - {name: packs, when: {feature: 3, threshold: 1.0}}
  - name: own
    when: {probe: deception, threshold: 0.5}
    sae: {name: gemma-3-270m, hook: blocks.9.hook_resid_post, sha256: fedcba9876543210}
"""


def test_rules_get_the_packs_sae_unless_they_name_their_own() -> None:
    pack = load_rule_pack(PACK)
    assert pack.sae == A
    assert [r.sae for r in pack.rules] == [A, B]
    # Stored one by one, each rule still says which SAE it was written for.
    assert pack.rules[0].model_dump(mode="json")["sae"]["sha256"] == A.sha256


def test_the_writer_leaves_out_what_the_pack_says_and_reads_back_the_same() -> None:
    pack = load_rule_pack(PACK)
    text = dump_rule_pack(pack.model_dump(mode="json", exclude_defaults=True))
    assert text.count("sha256:") == 2  # the pack's, and the rule that names another
    assert load_rule_pack(text) == pack


def test_a_bad_pack_sae_is_one_error_with_its_line() -> None:
    with pytest.raises(RuleValidationError) as err:
        load_rule_pack(PACK.replace("0123456789abcdef", "nothex"), source="p.yaml")
    assert err.value.errors == [("sae.sha256", err.value.problem)]
    assert err.value.line == 1 and "16 lowercase hex digits" in err.value.problem


def test_a_rule_applies_only_next_to_its_own_sae() -> None:
    packs, own = load_rule_pack(PACK).rules
    assert binding_problem(packs, A) is None
    problem = binding_problem(packs, B)
    assert problem is not None and str(A) in problem and str(B) in problem
    unbound = packs.model_copy(update={"sae": None})
    assert "records no SAE identity" in (binding_problem(unbound, A) or "")
    assert binding_problem(own, B) is None


def test_check_binding_binds_unbound_refuses_others_unless_asked() -> None:
    packs = load_rule_pack(PACK).rules[0]
    assert check_binding(packs.model_copy(update={"sae": None}), B).sae == B
    assert check_binding(packs, A) is packs
    with pytest.raises(SAEMismatchError) as err:
        check_binding(packs, B, field="rules[0].sae")
    exc = err.value
    assert (exc.field, exc.rule) == ("rules[0].sae", "packs")
    assert str(A) in str(exc) and str(B) in str(exc) and str(exc).startswith("rules[0].sae: ")
    assert check_binding(packs, B, bind=True).sae == B


def test_bind_pack_keeps_rules_that_name_their_own() -> None:
    pack = load_rule_pack(PACK.split("\n", 1)[1])  # without the pack's `sae:`
    assert pack.sae is None and [r.sae for r in pack.rules] == [None, B]
    bound = bind_pack(pack, A)
    assert bound.sae == A and [r.sae for r in bound.rules] == [A, B]
