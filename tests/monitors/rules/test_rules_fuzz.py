"""Arbitrary YAML and arbitrary model inputs never crash: they load or give RuleValidationError."""

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from latentguard.monitors.errors import RuleValidationError
from latentguard.monitors.rules import RulePack, load_rule_pack, validate_rule

KEYS = ["rules", "policies", "name", "when", "feature", "probe", "threshold", "op", "window",
        "size", "agg", "above", "consecutive", "all", "any", "signal", "action", "type", "steer",
        "mode", "features", "value", "tokens", "scope", "severity", "enabled", "timeout_ms",
        "monitoring", "on_failure", "description", "preserve_norm", "x"]
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 5000), st.floats(allow_nan=True),
    st.sampled_from(["r1", "*", ">", "max", "count", "steer", "clamp", "high", "both", "", "A B"]),
)
TREES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.sampled_from(KEYS), inner, max_size=5)),
    max_leaves=30,
)


def _load(text):
    try:
        pack = load_rule_pack(text, "fuzz.yaml")
    except RuleValidationError as exc:
        assert str(exc).startswith("fuzz.yaml")
        return None
    assert isinstance(pack, RulePack)
    return pack


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(["rules", "policies", "x"]), TREES, max_size=3))
def test_structured_yaml_never_crashes(data):
    _load(yaml.safe_dump(data))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_random_text_never_crashes(text):
    _load(text)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(KEYS), TREES, max_size=6))
def test_validate_rule_never_crashes(data):
    try:
        validate_rule(data)
    except RuleValidationError as exc:
        assert exc.errors and all(isinstance(f, str) for f, _ in exc.errors)
