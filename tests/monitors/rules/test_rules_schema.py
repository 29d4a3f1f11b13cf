import pytest
from pydantic import ValidationError

from latentguard.monitors.errors import RuleValidationError
from latentguard.monitors.rules import (
    SEVERITY_ORDER,
    Action,
    Condition,
    Policy,
    Rule,
    RulePack,
    Window,
    severity_rank,
)


def test_severity_rank_is_ordered():
    ranks = [severity_rank(s) for s in SEVERITY_ORDER]
    assert ranks == sorted(ranks) and len(set(ranks)) == len(ranks)
    assert severity_rank("critical") > severity_rank("info")
    with pytest.raises(RuleValidationError):
        severity_rank("urgent")


def test_condition_shorthand_is_normalised():
    cond = Condition.model_validate({"feature": 3, "threshold": 1.5, "op": ">="})
    assert cond.signal is not None and cond.signal.feature == 3 and cond.signal.op == ">="
    assert cond.all is None and cond.any is None


def test_condition_signals_walks_the_tree():
    cond = Condition.model_validate(
        {"all": [{"feature": 1, "threshold": 0}, {"any": [{"probe": "p", "threshold": 0}]}]}
    )
    assert [s.feature or s.probe for s in cond.signals()] == [1, "p"]


@pytest.mark.parametrize(
    "data",
    [
        {"feature": 1, "probe": "x", "threshold": 0},  # both sources
        {"signal": {"threshold": 0}},  # no source
        {"all": []},  # empty combinator
        {"all": [{"feature": 1, "threshold": 0}], "any": [{"feature": 1, "threshold": 0}]},
        {},
        {"feature": -1, "threshold": 0},
        {"feature": 1, "threshold": float("nan")},
        {"feature": 1, "threshold": 0, "consecutive": 0},
        {"feature": 1, "threshold": 0, "window": {"size": 0}},
        {"feature": 1, "threshold": 0, "window": {"size": 4097}},
        {"feature": 1, "threshold": 0, "window": {"size": 2, "agg": "count"}},
        {"feature": 1, "threshold": 0, "window": {"size": 2, "agg": "max", "above": 1}},
        {"feature": 1, "threshold": 0, "tresh": 1},
    ],
)
def test_invalid_conditions_are_rejected(data):
    with pytest.raises(ValidationError):
        Condition.model_validate(data)


def test_window_count_with_above_is_valid():
    assert Window(size=3, agg="count", above=0.5).above == 0.5


def test_action_steer_required_iff_type_steer():
    with pytest.raises(ValidationError):
        Action(type="steer")
    steer = {"mode": "ablate", "features": [{"feature": 1}]}
    with pytest.raises(ValidationError):
        Action.model_validate({"type": "block", "steer": steer})
    act = Action.model_validate({"type": "steer", "steer": steer})
    assert act.steer is not None and act.steer.tokens == 0


@pytest.mark.parametrize("name", ["Upper", "-lead", "", "a" * 64, "sp ace"])
def test_bad_rule_names_rejected(name):
    with pytest.raises(ValidationError):
        Rule.model_validate({"name": name, "when": {"feature": 0, "threshold": 0}})


def test_rule_defaults():
    rule = Rule.model_validate({"name": "r.1", "when": {"feature": 0, "threshold": 0}})
    assert (rule.severity, rule.scope, rule.enabled, rule.action.type) == (
        "medium", "generation", True, "alert",
    )


def test_policy_star_must_be_alone():
    with pytest.raises(ValidationError):
        Policy(name="p", rules=["*", "a"])
    with pytest.raises(ValidationError):
        Policy(name="p", timeout_ms=0)


def _rule(name, enabled=True):
    return {"name": name, "enabled": enabled, "when": {"feature": 0, "threshold": 0}}


def test_pack_rules_for_policy_selects_enabled_rules():
    pack = RulePack.model_validate(
        {
            "rules": [_rule("a"), _rule("b", enabled=False), _rule("c")],
            "policies": [{"name": "all", "rules": ["*"]}, {"name": "some", "rules": ["c", "b"]}],
        }
    )
    assert [r.name for r in pack.rules_for(pack.policy("all"))] == ["a", "c"]
    assert [r.name for r in pack.rules_for(pack.policy("some"))] == ["c"]
    with pytest.raises(RuleValidationError):
        pack.policy("missing")


def test_pack_unknown_policy_rule_names_field():
    with pytest.raises(RuleValidationError) as info:
        RulePack.model_validate(
            {"rules": [_rule("a")], "policies": [{"name": "p", "rules": ["a", "zz"]}]}
        )
    assert info.value.field == "policies[0].rules[1]"
    assert "zz" in info.value.problem


def test_pack_duplicate_names_name_field():
    with pytest.raises(RuleValidationError) as info:
        RulePack.model_validate(
            {"rules": [_rule("a"), _rule("a")], "policies": [{"name": "p"}, {"name": "p"}]}
        )
    assert [f for f, _ in info.value.errors] == ["rules[1].name", "policies[1].name"]
