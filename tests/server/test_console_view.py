"""The trace view (`server/console/_trace_view.py`): which signal, its values, windows,
shading, and the plot."""

from __future__ import annotations

import pytest

from latentguard.monitors.rules import Rule, RuleHit
from latentguard.server.console._trace_view import MAX_SHOWN, build_view
from latentguard.server.records import FeatureValue, TokenRecord, TraceRecord


def hit(rule: str, position: int, signal: str) -> RuleHit:
    return RuleHit.model_validate({
        "rule": rule, "severity": "high", "action": {"type": "alert"}, "position": position,
        "score": 1.0, "explanation": "x",
        "evidence": [{"signal": signal, "position": position, "value": 1.0}]})


def tokens(values: list[float], name: str = "feature 3", prompt: int = 0,
           recorded: bool = True) -> list[TokenRecord]:
    return [TokenRecord(position=i, token_id=i, text=f"t{i}", prompt=i < prompt,
                        top_features=[FeatureValue(feature=3, value=v)] if v > 0 else [],
                        signals={name: v} if recorded else {})
            for i, v in enumerate(values)]


def rules(**when: dict) -> dict[str, tuple[Rule, int]]:
    return {name.replace("_", "-"): (Rule.model_validate({"name": name.replace("_", "-"),
                                                          "scope": "both", "when": w}), 3)
            for name, w in when.items()}


def test_tokens_shaded_by_the_signal_that_fired() -> None:
    trace = TraceRecord(tokens=tokens([0.0, 1.0, 2.0, 4.0]), hits=[hit("r", 3, "feature 3")])
    view = build_view(trace, rules(r={"feature": 3, "threshold": 2.0}))
    assert view.signal_name == "feature 3" and view.threshold == 2.0 and view.rule_version == 3
    assert view.source == "recorded"
    assert [c.shade for c in view.cells] == [0.0, 0.25, 0.5, 1.0]
    assert [c.holds for c in view.cells] == [False, False, False, True]  # `>`, not `>=`
    assert [c.hit for c in view.cells] == [False, False, False, True]
    plot = view.plot
    assert plot is not None and len(plot.lines) == 1 and plot.threshold_y is not None
    assert (plot.low, plot.high) == (0.0, 4.0) and len(plot.hits) == 1
    assert view.features[3] == [(3, 4.0)]


def test_window_scope_and_the_raw_line() -> None:
    trace = TraceRecord(tokens=tokens([5.0, 1.0, 1.0, 0.0], prompt=1),
                        hits=[hit("w", 2, "feature 3")])
    rule = Rule.model_validate({"name": "w", "when": {
        "feature": 3, "threshold": 1.5, "window": {"size": 2, "agg": "sum"}}})  # generation
    view = build_view(trace, {"w": (rule, 1)})
    # The prompt token is out of scope (not compared, not shaded); the window sums the rest.
    assert [c.value for c in view.cells] == [None, 1.0, 2.0, 1.0]
    assert [c.raw for c in view.cells] == [5.0, 1.0, 1.0, 0.0]
    assert [c.holds for c in view.cells] == [False, False, True, False]
    assert view.cells[0].shade == 0.0
    assert view.plot is not None and view.plot.raw_lines and view.plot.boundary_x is not None


def test_older_traces_fall_back_to_top_features_or_to_nothing() -> None:
    trace = TraceRecord(tokens=tokens([0.0, 3.0], recorded=False),
                        hits=[hit("r", 1, "feature 3")])
    view = build_view(trace, rules(r={"feature": 3, "threshold": 2.0}))
    assert view.source == "top-k" and [c.value for c in view.cells] == [0.0, 3.0]
    probe = TraceRecord(tokens=tokens([0.0, 3.0], recorded=False),
                        hits=[hit("p", 1, "probe deception")])
    view = build_view(probe, {})  # the rule is gone too
    assert view.source == "none" and view.signal is None and view.plot is None
    assert all(c.value is None and c.shade == 0.0 for c in view.cells)
    assert view.cells[1].hit


def test_choosing_a_hit_and_long_traces() -> None:
    n = MAX_SHOWN + 1000
    values = [0.0] * n
    values[n - 10] = 9.0
    trace = TraceRecord(tokens=tokens(values), hits=[hit("a", 5, "feature 3"),
                                                     hit("b", n - 10, "feature 3")])
    both = rules(a={"feature": 3, "threshold": 1.0}, b={"feature": 3, "threshold": 8.0})
    view = build_view(trace, both, hit_index=7)  # clamped to the last hit
    assert view.hit_index == 1 and view.hit is not None and view.hit.rule == "b"
    assert len(view.cells) == MAX_SHOWN and view.first_shown == n - MAX_SHOWN
    assert any(c.position == n - 10 and c.hit for c in view.cells)
    assert view.plot is not None
    points = view.plot.lines[0].split()
    assert len(points) <= 800  # downsampled, keeping each bin's peak
    assert min(float(p.split(",")[1]) for p in points) == pytest.approx(6.0)  # 9.0 at the top
    assert build_view(TraceRecord(tokens=tokens([1.0])), {}).hit is None
