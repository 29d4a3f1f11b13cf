"""Each token's own values of the rules' signals, as traces record them."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from latentguard.monitors.rules import Rule, RuleEngine
from latentguard.server.trace_signals import rule_signal_values


def rule(name: str, when: dict) -> Rule:
    return Rule.model_validate({"name": name, "when": when})


def test_features_and_probes_by_their_evidence_names() -> None:
    engine = RuleEngine([
        rule("a", {"feature": 9, "threshold": 1.0}),
        rule("b", {"all": [{"feature": 2, "threshold": 0.5},
                           {"probe": "deception", "threshold": 0.0,
                            "window": {"size": 4, "agg": "mean"}}]}),
        rule("c", {"feature": 9, "threshold": 3.0}),  # the same signal once
    ], probes=SimpleNamespace(names=["other", "deception"]))
    # Columns in engine.signal_features order: features 2, 9.
    selected = torch.tensor([[0.5, 1.23456], [0.0, 0.0]])
    probes = torch.tensor([[7.0, -0.25], [8.0, 0.125]], dtype=torch.float64)
    names, values = rule_signal_values(engine, selected, probes)
    assert names == ["feature 9", "feature 2", "probe deception"]
    assert values == [[1.2346, 0.5, -0.25], [0.0, 0.0, 0.125]]
    # Without probe scores (no probes loaded), only the features.
    names, values = rule_signal_values(engine, selected, None)
    assert names == ["feature 9", "feature 2"] and values[0] == [1.2346, 0.5]


def test_no_rules_no_values() -> None:
    selected = torch.zeros(3, 0)
    assert rule_signal_values(None, selected, None) == ([], [[], [], []])
    assert rule_signal_values(RuleEngine([]), selected, None) == ([], [[], [], []])


@pytest.mark.parametrize("agg", ["max", "sum"])
def test_values_are_before_any_window(agg: str) -> None:
    engine = RuleEngine([rule("w", {"feature": 0, "threshold": 1.0,
                                    "window": {"size": 2, "agg": agg}})])
    _, values = rule_signal_values(engine, torch.tensor([[1.0], [2.0]]), None)
    assert values == [[1.0], [2.0]]
