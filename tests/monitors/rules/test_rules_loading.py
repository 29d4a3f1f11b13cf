import textwrap

import pytest

from latentguard.monitors.errors import RuleValidationError
from latentguard.monitors.rules import load_rule_pack, validate_rule

VALID = textwrap.dedent(
    """\
    rules:
      - name: unsafe-code
        description: model writes exploit code
        severity: high
        scope: both
        when:
          all:
            - feature: 1234
              threshold: 3.0
              window: {size: 8, agg: mean}
            - any:
                - probe: deception
                  op: ">="
                  threshold: 0.5
                  consecutive: 3
                - signal: {feature: 7, threshold: 1, window: {size: 16, agg: count, above: 0.2}}
        action:
          type: steer
          steer:
            mode: clamp
            features: [{feature: 1234, value: 0.0}]
            tokens: 20
      - name: pii
        when: {feature: 5, threshold: 2}
        action: {type: block}
    policies:
      - name: default
        rules: ["*"]
        mode: sync
        on_failure: closed
      - name: pii-only
        rules: [pii]
        timeout_ms: 50
    """
)


def test_valid_pack_parses():
    pack = load_rule_pack(VALID, "rules.yaml")
    assert [r.name for r in pack.rules] == ["unsafe-code", "pii"]
    rule = pack.rules[0]
    assert rule.severity == "high" and rule.scope == "both"
    assert rule.when.all is not None
    first = rule.when.all[0].signal
    assert first is not None and first.feature == 1234 and first.window.agg == "mean"
    probe = rule.when.all[1].any[0].signal
    assert probe.probe == "deception" and probe.consecutive == 3 and probe.op == ">="
    assert rule.when.all[1].any[1].signal.window.above == 0.2
    assert rule.action.steer.mode == "clamp" and rule.action.steer.tokens == 20
    assert pack.policies[0].mode == "sync" and pack.policies[1].timeout_ms == 50


def test_empty_text_is_empty_pack():
    pack = load_rule_pack("", "empty.yaml")
    assert pack.rules == [] and pack.policies == []


def _error(text, source="rules.yaml"):
    with pytest.raises(RuleValidationError) as info:
        load_rule_pack(text, source)
    return info.value


def test_yaml_syntax_error_names_source_and_line():
    err = _error("rules:\n  - name: a\n    when: {feature: 1\n")
    assert err.source == "rules.yaml" and err.line is not None and err.line >= 3
    assert str(err).startswith("rules.yaml:")
    assert "invalid YAML" in err.problem


def test_non_mapping_top_level():
    err = _error("- 1\n- 2\n")
    assert "mapping" in err.problem


@pytest.mark.parametrize(
    ("old", "new", "field", "word"),
    [
        ("threshold: 3.0", "threshold: high", "rules[0].when.all[0].threshold", "number"),
        ("severity: high", "severity: urgent", "rules[0].severity", "info"),
        ("severity: high", "severty: high", "rules[0].severty", "unknown key"),
        ("scope: both", "scope: all", "rules[0].scope", "prompt"),
        ("op: \">=\"", "op: \"=>\"", "rules[0].when.all[1].any[0].op", ">="),
        ("size: 8, agg: mean", "size: 0, agg: mean", "rules[0].when.all[0].window.size", "1"),
        ("agg: count, above: 0.2", "agg: count", "rules[0].when.all[1].any[1].signal.window",
         "above"),
        ("consecutive: 3", "consecutive: 0", "rules[0].when.all[1].any[0].consecutive", "1"),
        ("mode: clamp", "mode: clampp", "rules[0].action.steer.mode", "clamp"),
        ("features: [{feature: 1234, value: 0.0}]", "features: []",
         "rules[0].action.steer.features", "at least 1"),
        ("type: steer", "type: stop", "rules[0].action.type", "alert"),
        ("- name: pii", "- name: PII", "rules[1].name", "pattern"),
        ("rules: [pii]", "rules: [pii, nope]", "policies[1].rules[1]", "nope"),
        ("- name: pii\n", "- name: unsafe-code\n", "rules[1].name", "duplicate"),
        ("timeout_ms: 50", "timeout_ms: -5", "policies[1].timeout_ms", "greater than 0"),
        ("mode: sync", "mode: fast", "policies[0].mode", "sync"),
    ],
)
def test_each_mistake_names_field_and_line(old, new, field, word):
    assert old in VALID
    line = VALID[: VALID.index(old)].count("\n") + 1  # the edited line holds the bad key
    err = _error(VALID.replace(old, new, 1))
    assert err.field == field
    assert err.line == line
    assert word in err.problem
    assert f"rules.yaml:{line}: {field}: " in str(err)


def test_several_mistakes_are_all_reported():
    text = VALID.replace("severity: high", "severity: x").replace("timeout_ms: 50", "timeout_ms: 0")
    err = _error(text)
    fields = [f for f, _ in err.errors]
    assert "rules[0].severity" in fields and "policies[1].timeout_ms" in fields
    assert len(err.lines) == len(err.errors)


def test_validate_rule_reports_dotted_path():
    rule = validate_rule({"name": "r", "when": {"feature": 1, "threshold": 2}})
    assert rule.when.signal.feature == 1
    with pytest.raises(RuleValidationError) as info:
        validate_rule({"name": "r", "when": {"any": [{"feature": 1, "threshold": "x"}]}})
    assert info.value.field == "when.any[0].threshold"
    with pytest.raises(RuleValidationError) as info:
        validate_rule({"name": "r", "when": {"signal": {"feature": 1, "threshold": "x"}}})
    assert info.value.field == "when.signal.threshold"
    with pytest.raises(RuleValidationError):
        validate_rule(["not", "a", "dict"])


def test_deeply_nested_condition_gives_validation_error_not_crash():
    inner = "{all: [" * 400 + "{feature: 1, threshold: 0}" + "]}" * 400
    text = "rules:\n  - name: deep\n    when: " + inner
    with pytest.raises(RuleValidationError):
        load_rule_pack(text, "deep.yaml")


def test_a_dumped_pack_with_repeated_values_loads_back() -> None:
    """PyYAML writes an anchor for a value that appears twice, which the loader refuses:
    dump_rule_pack writes it out in full instead."""
    from latentguard.monitors.rules import dump_rule_pack

    when = {"feature": 3, "threshold": 1.0}
    data = {"rules": [{"name": "a", "when": when}, {"name": "b", "when": when}]}
    pack = load_rule_pack(dump_rule_pack(data))
    assert [r.name for r in pack.rules] == ["a", "b"]


@pytest.mark.parametrize(("field", "user", "line"), [
    ("rules[0].when.all[0].signal.feature", "rules[0].when.all[0].feature", 8),
    ("rules[0].when.all[1].any[1].signal.feature", "rules[0].when.all[1].any[1].signal.feature",
     16),
    ("rules[0].when.all[1].any[0].signal.probe", "rules[0].when.all[1].any[0].probe", 12),
    ("rules[0].action.steer.features[0].feature", "rules[0].action.steer.features[0].feature",
     21),
    ("rules[1].when.signal.feature", "rules[1].when.feature", 24),
])
def test_locate_gives_the_field_as_written_and_its_line(field, user, line):
    """Problems found after parsing (a feature the SAE lacks) are named as the pack wrote them:
    the ``signal:`` the shorthand leaves out is left out, and the line is the key's."""
    from latentguard.monitors.rules.loading import locate

    assert locate(VALID, field) == (user, line)


def test_end_rules_are_checked_where_written():
    end = {"name": "r", "check": "end",
           "when": {"probe": "deception", "window": {"agg": "mean"}, "threshold": 0.5}}
    assert validate_rule(end).check == "end"
    with pytest.raises(RuleValidationError) as info:
        validate_rule({**end, "action": {"type": "block"}})
    assert info.value.field == "action" and "can only alert" in info.value.problem
    with pytest.raises(RuleValidationError) as info:
        validate_rule({**end, "when": {"any": [{"feature": 1, "threshold": 2}]}})
    assert info.value.field == "when"
    assert info.value.problem.startswith("when.any[0].signal.window: ")
    with pytest.raises(RuleValidationError) as info:
        validate_rule({**end, "when": {"feature": 1, "threshold": 2, "consecutive": 2,
                                       "window": {"agg": "max"}}})
    assert "consecutive" in info.value.problem
    with pytest.raises(RuleValidationError) as info:
        validate_rule({**end, "check": "later"})
    assert info.value.field == "check"
