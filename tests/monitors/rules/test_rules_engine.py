import operator
import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from latentguard.monitors.errors import RuleValidationError, ShapeError, UnknownFeatureError
from latentguard.monitors.rules import Policy, Rule, RuleEngine, validate_rule

ALL = Policy(name="all", rules=["*"])


class Probes:
    names = ["deception", "toxicity"]


def rule(name, when, **kw):
    return validate_rule({"name": name, "when": when, **kw})


def run(engine, fv, pv=None, prompt=None, policy=ALL, start=0):
    session = engine.new_session(policy)
    fv = torch.as_tensor(np.asarray(fv, dtype=np.float32))
    n = fv.shape[0]
    prompt = prompt if prompt is not None else [False] * n
    return session, session.step(fv, pv, list(range(start, start + n)), prompt)


def test_signal_features_are_sorted_unique_and_columns_follow():
    engine = RuleEngine(
        [rule("a", {"feature": 40, "threshold": 1}),
         rule("b", {"any": [{"feature": 7, "threshold": 1}, {"feature": 40, "threshold": 5}]})],
        d_sae=64,
    )
    assert engine.signal_features.tolist() == [7, 40]
    # column 0 is feature 7, column 1 feature 40
    _, hits = run(engine, [[0.0, 2.0], [3.0, 0.0]])
    assert [(h.rule, h.position) for h in hits] == [("a", 0), ("b", 1)]
    assert hits[1].evidence[0].signal == "feature 7"


def test_fires_once_per_crossing():
    engine = RuleEngine([rule("r", {"feature": 0, "threshold": 1.0})], d_sae=4)
    values = [0, 2, 3, 2, 0, 0, 5, 0, 1.5]
    _, hits = run(engine, [[v] for v in values])
    assert [h.position for h in hits] == [1, 6, 8]
    assert [h.score for h in hits] == [2.0, 5.0, 1.5]


def test_state_carries_across_steps():
    engine = RuleEngine([rule("r", {"feature": 0, "threshold": 1.0, "consecutive": 3})], d_sae=4)
    session = engine.new_session(ALL)
    hits = []
    for pos, v in enumerate([2, 2, 2, 2, 0, 2, 2, 2]):
        hits += session.step(torch.tensor([[float(v)]]), None, [pos], [False])
    assert [h.position for h in hits] == [2, 7]
    assert "since position 5" in hits[1].explanation


@pytest.mark.parametrize(
    ("scope", "want"), [("prompt", [1]), ("generation", [3]), ("both", [1, 3])]
)
def test_scope_filters_rows(scope, want):
    engine = RuleEngine([rule("r", {"feature": 0, "threshold": 1.0}, scope=scope)], d_sae=2)
    values = [[0], [2], [0], [2]]
    _, hits = run(engine, values, prompt=[True, True, False, False])
    assert [h.position for h in hits] == want


def test_window_counts_in_scope_tokens_only():
    when = {"feature": 0, "threshold": 2.5, "window": {"size": 3, "agg": "sum"}}
    engine = RuleEngine([rule("r", when, scope="generation")], d_sae=2)
    # prompt rows (huge values) must not enter the generation window
    _, hits = run(engine, [[100], [100], [1], [1], [1]], prompt=[True, True, False, False, False])
    assert [h.position for h in hits] == [4]
    assert hits[0].score == pytest.approx(3.0)


def test_all_and_any_combinators_and_evidence():
    when = {"all": [{"feature": 1, "threshold": 1},
                    {"any": [{"probe": "deception", "threshold": 0.5},
                             {"feature": 2, "op": "<", "threshold": -1}]}]}
    engine = RuleEngine([rule("combo", when, severity="high")], probes=Probes(), d_sae=8)
    fv = [[2, 0], [2, 0], [0, -5], [2, -5]]
    pv = torch.tensor([[0.9, 0.0], [0.1, 0.0], [0.9, 0.0], [0.1, 0.0]])
    _, hits = run(engine, fv, pv=pv)
    assert [h.position for h in hits] == [0, 3]
    first, second = hits
    assert [e.signal for e in first.evidence] == ["feature 1", "probe deception"]
    assert first.evidence[1].value == pytest.approx(0.9)
    assert [e.signal for e in second.evidence] == ["feature 2", "feature 1"][::-1]
    assert first.severity == "high" and first.action.type == "alert"
    assert "feature 1 = 2 > 1 at position 0" in first.explanation
    assert "probe deception" in first.explanation


def test_max_window_evidence_points_at_the_peak():
    when = {"feature": 0, "threshold": 4, "op": ">=", "window": {"size": 4, "agg": "max"}}
    engine = RuleEngine([rule("r", when)], d_sae=2)
    _, hits = run(engine, [[1], [5], [2]], start=10)
    assert hits[0].position == 11 and hits[0].evidence[0].position == 11
    assert "max over the last 4 tokens" in hits[0].explanation


def test_count_window():
    when = {"feature": 0, "threshold": 2, "op": ">=",
            "window": {"size": 3, "agg": "count", "above": 0.5}}
    engine = RuleEngine([rule("r", when)], d_sae=2)
    _, hits = run(engine, [[1], [0], [1], [0], [0], [1], [1]])
    assert [h.position for h in hits] == [2, 6]


def test_policy_selects_rules_and_monitoring_off():
    rules = [rule("a", {"feature": 0, "threshold": 0}), rule("b", {"feature": 0, "threshold": 0}),
             rule("c", {"feature": 0, "threshold": 0}, enabled=False)]
    engine = RuleEngine(rules, d_sae=2)
    assert set(engine.rules) == {"a", "b"}
    _, hits = run(engine, [[1]], policy=Policy(name="p", rules=["b", "c"]))
    assert [h.rule for h in hits] == ["b"]
    _, hits = run(engine, [[1]], policy=Policy(name="off", rules=["*"], monitoring=False))
    assert hits == []


def test_compile_errors():
    with pytest.raises(UnknownFeatureError, match="feature 64"):
        RuleEngine([rule("r", {"feature": 64, "threshold": 0})], d_sae=64)
    with pytest.raises(UnknownFeatureError, match="unknown probe 'lies'.*deception"):
        RuleEngine([rule("r", {"probe": "lies", "threshold": 0})], probes=Probes(), d_sae=64)
    with pytest.raises(UnknownFeatureError, match="loaded: none"):
        RuleEngine([rule("r", {"probe": "lies", "threshold": 0})], d_sae=64)
    steer = {"type": "steer", "steer": {"mode": "ablate", "features": [{"feature": 99}]}}
    with pytest.raises(UnknownFeatureError, match="steer feature 99"):
        RuleEngine([rule("r", {"feature": 1, "threshold": 0}, action=steer)], d_sae=64)
    r = rule("r", {"feature": 1, "threshold": 0})
    with pytest.raises(RuleValidationError):
        RuleEngine([r, r], d_sae=64)


def test_compile_errors_carry_the_rules_field():
    """The engine names the field it refuses (the server passes it on as the BadRequest
    field); no one has to find it again from the message."""
    when = {"all": [{"feature": 1, "threshold": 0},
                    {"any": [{"probe": "deception", "threshold": 0},
                             {"feature": 70, "threshold": 0}]}]}
    with pytest.raises(UnknownFeatureError) as err:
        RuleEngine([rule("deep", when)], probes=Probes(), d_sae=64)
    assert (err.value.rule, err.value.field) == ("deep", "when.all[1].any[1].signal.feature")
    assert err.value.problem == "feature 70 out of range (the SAE has 64)"
    assert str(err.value) == ("rule 'deep': when.all[1].any[1].signal.feature: "
                              "feature 70 out of range (the SAE has 64)")
    with pytest.raises(UnknownFeatureError) as err:
        RuleEngine([rule("p", {"any": [{"feature": 1, "threshold": 0},
                                       {"probe": "lies", "threshold": 0}]})], d_sae=64)
    assert err.value.field == "when.any[1].signal.probe"
    steer = {"type": "steer", "steer": {"mode": "add", "features": [
        {"feature": 2, "value": 1}, {"feature": 64, "value": 1}]}}
    with pytest.raises(UnknownFeatureError) as err:
        RuleEngine([rule("s", {"feature": 1, "threshold": 0}, action=steer)], d_sae=64)
    assert err.value.field == "action.steer.features[1].feature"
    with pytest.raises(UnknownFeatureError) as err:
        RuleEngine([rule("top", {"feature": 64, "threshold": 0})], d_sae=64)
    assert err.value.field == "when.signal.feature"


def test_unknown_feature_error_pickles_with_its_field():
    err = UnknownFeatureError("feature 9 out of range", field="when.signal.feature", rule="r")
    back = pickle.loads(pickle.dumps(err))
    assert (back.field, back.rule, back.problem, str(back)) == (
        err.field, err.rule, err.problem, str(err))
    plain = UnknownFeatureError("unknown probe 'x'")
    assert (plain.field, str(plain)) == ("", "unknown probe 'x'")
    assert str(pickle.loads(pickle.dumps(plain))) == "unknown probe 'x'"


def test_signal_paths_follow_the_tree():
    cond = rule("t", {"any": [{"feature": 1, "threshold": 0},
                              {"all": [{"feature": 2, "threshold": 0},
                                       {"probe": "x", "threshold": 0}]}]}).when
    assert [(p, s.source_name) for p, s in cond.signal_paths("when")] == [
        ("when.any[0].signal", "feature 1"), ("when.any[1].all[0].signal", "feature 2"),
        ("when.any[1].all[1].signal", "probe x")]
    assert cond.signals() == [s for _, s in cond.signal_paths()]


def test_step_shape_errors():
    engine = RuleEngine([rule("r", {"probe": "deception", "threshold": 0}),
                         rule("f", {"feature": 3, "threshold": 0})], probes=Probes(), d_sae=8)
    s = engine.new_session(ALL)
    with pytest.raises(ShapeError, match="feature_values"):
        s.step(torch.zeros(2, 2), torch.zeros(2, 2), [0, 1], [False, False])
    with pytest.raises(ShapeError, match="probe_values"):
        s.step(torch.zeros(2, 1), None, [0, 1], [False, False])
    with pytest.raises(ShapeError, match="probe_values"):
        s.step(torch.zeros(2, 1), torch.zeros(2, 3), [0, 1], [False, False])
    with pytest.raises(ShapeError, match="is_prompt"):
        s.step(torch.zeros(2, 1), torch.zeros(2, 2), [0, 1], [False])
    with pytest.raises(ShapeError):
        s.step(torch.zeros(2, 1, dtype=torch.int64), torch.zeros(2, 2), [0, 1], [False, False])
    assert s.step(torch.zeros(0, 1), None, [], []) == []


# ------------------------------------------------------------------ property: vs brute force
OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}


def reference_hits(values, prompt, scope, op, threshold, window, consecutive):
    """Brute force: recompute every aggregate from the full in-scope history."""
    history, run_len, active, hits = [], 0, False, []
    for pos, (v, p) in enumerate(zip(values, prompt, strict=True)):
        if scope == "prompt" and not p or scope == "generation" and p:
            continue
        history.append(v)
        if window is None:
            agg = v
        else:
            size = window.get("size")
            last = history if size is None else history[-size:]
            agg = {"max": max(last), "sum": sum(last), "mean": sum(last) / len(last),
                   "count": sum(x > window.get("above", 0) for x in last)}[window["agg"]]
        run_len = run_len + 1 if OPS[op](agg, threshold) else 0
        holds = run_len >= consecutive
        if holds and not active:
            hits.append((pos, agg))
        active = holds
    return hits


windows = st.one_of(
    st.none(),
    st.builds(lambda s, a: {"size": s, "agg": a}, st.integers(1, 6),
              st.sampled_from(["max", "sum", "mean"])),
    st.builds(lambda s, above: {"size": s, "agg": "count", "above": above}, st.integers(1, 6),
              st.sampled_from([-0.5, 0.0, 0.5])),
    st.builds(lambda a: {"agg": a}, st.sampled_from(["max", "sum", "mean"])),  # whole request
    st.builds(lambda above: {"agg": "count", "above": above}, st.sampled_from([-0.5, 0.0, 0.5])),
)


@settings(max_examples=300, deadline=None)
@given(
    values=st.lists(st.sampled_from([-2.0, -0.5, 0.0, 0.25, 0.5, 1.0, 2.0, 3.0]), max_size=40),
    data=st.data(),
    scope=st.sampled_from(["prompt", "generation", "both"]),
    op=st.sampled_from(list(OPS)),
    threshold=st.sampled_from([-1.0, 0.0, 0.5, 1.0, 2.0]),
    window=windows,
    consecutive=st.integers(1, 4),
    chunk=st.integers(1, 7),
)
def test_engine_matches_brute_force(values, data, scope, op, threshold, window, consecutive,
                                    chunk):
    prompt = data.draw(st.lists(st.booleans(), min_size=len(values), max_size=len(values)))
    prompt = sorted(prompt, reverse=True)  # prompt rows come first, as in a request
    when = {"feature": 5, "op": op, "threshold": threshold, "consecutive": consecutive}
    if window is not None:
        when["window"] = window
    engine = RuleEngine([Rule.model_validate({"name": "r", "scope": scope, "when": when})],
                        d_sae=8)
    session = engine.new_session(ALL)
    got = []
    for lo in range(0, len(values), chunk):  # arbitrary step boundaries must not matter
        hi = min(lo + chunk, len(values))
        fv = torch.tensor([[v] for v in values[lo:hi]], dtype=torch.float32).reshape(-1, 1)
        got += session.step(fv, None, list(range(lo, hi)), prompt[lo:hi])
    want = reference_hits(values, prompt, scope, op, threshold, window, consecutive)
    assert [h.position for h in got] == [p for p, _ in want]
    for h, (_, agg) in zip(got, want, strict=True):
        assert h.score == pytest.approx(agg, abs=1e-9)
        assert h.rule == "r" and h.explanation


class FeatureProbes:
    names = ["deception", "code-sae"]
    feature_support = torch.tensor([5, 40])


def test_features_probes_add_their_features_to_the_encode():
    engine = RuleEngine([rule("a", {"feature": 40, "threshold": 1}),
                         rule("b", {"probe": "code-sae", "threshold": 0.5})],
                        probes=FeatureProbes(), d_sae=64)
    # One encode gathers the rule's feature and the probes' features; the probe columns are
    # picked out of it in the probe set's order.
    assert engine.signal_features.tolist() == [5, 40]
    assert engine.probe_feature_columns.tolist() == [0, 1]
    _, hits = run(engine, [[9.0, 2.0]], pv=torch.tensor([[0.0, 0.7]]))
    assert sorted(h.rule for h in hits) == ["a", "b"]
    with pytest.raises(UnknownFeatureError, match="feature 40 out of range"):
        RuleEngine([], probes=FeatureProbes(), d_sae=16)


def reference_end_hit(values, prompt, scope, op, threshold, window):
    """Brute force of an end rule: its window's aggregate over the in-scope tokens, once."""
    seen = [(pos, v) for pos, (v, p) in enumerate(zip(values, prompt, strict=True))
            if scope == "both" or (scope == "prompt") == p]
    if not seen:
        return []
    size = window.get("size")
    last = [v for _, v in (seen if size is None else seen[-size:])]
    agg = {"max": max(last), "sum": sum(last), "mean": sum(last) / len(last),
           "count": sum(x > window.get("above", 0) for x in last)}[window["agg"]]
    return [(seen[-1][0], agg)] if OPS[op](agg, threshold) else []


@settings(max_examples=300, deadline=None)
@given(
    values=st.lists(st.sampled_from([-2.0, -0.5, 0.0, 0.25, 0.5, 1.0, 2.0, 3.0]), max_size=40),
    data=st.data(),
    scope=st.sampled_from(["prompt", "generation", "both"]),
    op=st.sampled_from(list(OPS)),
    threshold=st.sampled_from([-1.0, 0.0, 0.5, 1.0, 2.0]),
    window=windows.filter(lambda w: w is not None),
    chunk=st.integers(1, 7),
)
def test_end_rules_match_brute_force(values, data, scope, op, threshold, window, chunk):
    prompt = sorted(data.draw(st.lists(st.booleans(), min_size=len(values),
                                       max_size=len(values))), reverse=True)
    when = {"feature": 5, "op": op, "threshold": threshold, "window": window}
    engine = RuleEngine([Rule.model_validate({"name": "r", "scope": scope, "check": "end",
                                              "when": when})], d_sae=8)
    session = engine.new_session(ALL)
    for lo in range(0, len(values), chunk):
        hi = min(lo + chunk, len(values))
        fv = torch.tensor([[v] for v in values[lo:hi]], dtype=torch.float32).reshape(-1, 1)
        assert session.step(fv, None, list(range(lo, hi)), prompt[lo:hi]) == []
    got = session.finish()
    want = reference_end_hit(values, prompt, scope, op, threshold, window)
    assert [(h.position, h.score) for h in got] == [(p, pytest.approx(a, abs=1e-9))
                                                     for p, a in want]
    assert session.finish() == []  # checked once


def test_end_rule_beside_token_rules():
    engine = RuleEngine([
        rule("mean-end", {"probe": "deception", "window": {"agg": "mean"}, "threshold": 0.5},
             check="end"),
        rule("token", {"probe": "deception", "threshold": 0.5}),
    ], probes=Probes(), d_sae=8)
    session = engine.new_session(ALL)
    fv = torch.zeros(4, 0)
    pv = torch.tensor([[0.9, 0.0], [0.1, 0.0], [0.8, 0.0], [0.7, 0.0]])
    hits = session.step(fv, pv, [3, 4, 5, 6], [False] * 4)
    assert [h.rule for h in hits] == ["token", "token"]  # the end rule waits for the end
    (end,) = session.finish()
    assert end.rule == "mean-end" and end.position == 6
    assert end.score == pytest.approx(0.625)
    assert "fired at the end of the request" in end.explanation
    assert "probe deception mean over the request's tokens = 0.625 > 0.5" in end.explanation
    assert "at position" not in end.explanation


def test_end_rule_does_not_fire_below_threshold_or_without_tokens():
    r = rule("end", {"feature": 1, "window": {"agg": "mean"}, "threshold": 1.0}, check="end",
             scope="generation")
    engine = RuleEngine([r], d_sae=8)
    s, _ = run(engine, [[5.0]], prompt=[True])  # prompt only: nothing in scope
    assert s.finish() == []
    s, _ = run(engine, [[2.0], [0.0], [0.5]])  # mean 0.83 < 1
    assert s.finish() == []
