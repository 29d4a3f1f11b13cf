import pytest

from latentguard.monitors.errors import (
    MonitorError,
    NotFoundError,
    RuleValidationError,
    SAEFormatError,
    ShapeError,
    UnknownFeatureError,
)


@pytest.mark.parametrize(
    "cls", [SAEFormatError, RuleValidationError, ShapeError, UnknownFeatureError, NotFoundError]
)
def test_all_errors_derive_from_monitor_error(cls):
    assert issubclass(cls, MonitorError)


def test_rule_validation_error_str_is_field_colon_problem():
    err = RuleValidationError("rules[2].when.any[0].threshold", "must be a number")
    assert str(err) == "rules[2].when.any[0].threshold: must be a number"
    assert err.field == "rules[2].when.any[0].threshold"
    assert err.problem == "must be a number"
    assert err.errors == [(err.field, err.problem)]
    assert err.line is None


def test_rule_validation_error_without_field_is_just_the_problem():
    assert str(RuleValidationError("", "empty")) == "empty"


def test_rule_validation_error_several_problems_with_source_and_lines():
    err = RuleValidationError(
        "a", "x", errors=[("a", "x"), ("b.c", "y")], source="r.yaml", lines=[3, None]
    )
    assert (err.field, err.problem, err.line) == ("a", "x", 3)
    assert str(err) == "r.yaml:3: a: x; r.yaml: b.c: y"


def test_rule_validation_error_rejects_mismatched_lines():
    with pytest.raises(ValueError):
        RuleValidationError("a", "x", errors=[("a", "x")], lines=[1, 2])


def test_sae_format_error_names_file_and_key():
    err = SAEFormatError("/m/sae.safetensors", "missing", key="W_enc")
    assert "/m/sae.safetensors" in str(err) and "W_enc" in str(err)
    assert err.key == "W_enc"


def test_shape_error_names_field():
    err = ShapeError("activations", "expected width 640, got 512")
    assert str(err).startswith("activations: ")
