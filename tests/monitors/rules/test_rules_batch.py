"""The step-level engine (RuleBatch) against the frozen per-token reference: many requests with
interleaved steps of any shape give the reference's hits, bit for bit (scores, evidence,
explanations), token rules and end rules alike."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from latentguard.monitors.errors import ShapeError
from latentguard.monitors.rules import Policy, Rule, RuleEngine
from latentguard.monitors.rules.batch import RuleSpan
from latentguard.monitors.rules.reference import reference_session

ALL = Policy(name="all", rules=["*"])
N_FEATURES = 4


class Probes:
    names = ["deception", "toxicity"]


VALUES = [-2.0, -0.5, -0.0, 0.0, 0.25, 0.5, 1.0, 2.0, 3.0]
THRESHOLDS = [-1.0, 0.0, 0.5, 1.0, 2.0, 2.5]

windows = st.one_of(
    st.builds(lambda s, a: {"size": s, "agg": a}, st.integers(1, 9),
              st.sampled_from(["max", "sum", "mean"])),
    st.builds(lambda s, above: {"size": s, "agg": "count", "above": above}, st.integers(1, 9),
              st.sampled_from([-0.5, 0.0, 0.5])),
    st.builds(lambda a: {"agg": a}, st.sampled_from(["max", "sum", "mean"])),
    st.builds(lambda above: {"agg": "count", "above": above}, st.sampled_from([-0.5, 0.0, 0.5])),
)


@st.composite
def signals(draw, end):
    sig = {"threshold": draw(st.sampled_from(THRESHOLDS)),
           "op": draw(st.sampled_from([">", ">=", "<", "<="]))}
    if draw(st.booleans()):
        sig["feature"] = draw(st.integers(0, N_FEATURES - 1))
    else:
        sig["probe"] = draw(st.sampled_from(Probes.names))
    if end or draw(st.booleans()):
        sig["window"] = draw(windows)
    if not end:
        sig["consecutive"] = draw(st.sampled_from([1, 1, 2, 3]))
    return sig


def conditions(end):
    leaf = signals(end)
    return st.recursive(leaf, lambda inner: st.builds(
        lambda kind, cs: {kind: cs}, st.sampled_from(["all", "any"]),
        st.lists(inner, min_size=1, max_size=3)), max_leaves=5)


@st.composite
def rule_lists(draw):
    rules = []
    for i in range(draw(st.integers(1, 5))):
        end = draw(st.integers(0, 3)) == 0
        rules.append(Rule.model_validate({
            "name": f"r{i}", "scope": draw(st.sampled_from(["prompt", "generation", "both"])),
            "check": "end" if end else "token", "when": draw(conditions(end))}))
    return rules


def dump(hits):
    return [h.model_dump(exclude={"at"}) for h in hits]


def values_for(rng, n, width, kind):
    if kind == 0:  # few distinct values: ties, crossings, equal maxima, signed zeros
        return rng.choice(VALUES, size=(n, width))
    # float32 values of any scale: sums that round
    x = rng.standard_normal((n, width)) * 10.0 ** rng.uniform(-3, 3, (n, width))
    return x.astype(np.float32).astype(np.float64)


def schedule(rng, prompts, gens, max_chunk):
    """Steps as lists of (request, prompt, count): prefill chunks while a request has prompt
    tokens left, then one generated row at a time (sometimes a few); any subset of the open
    requests takes part in a step."""
    left = [[p, g] for p, g in zip(prompts, gens, strict=True)]
    steps = []
    while any(p or g for p, g in left):
        step = []
        for r, (p, g) in enumerate(left):
            if not (p or g) or rng.random() < 0.3:
                continue
            if p:
                k = int(rng.integers(1, max_chunk + 1)) if rng.random() < 0.8 else p
                k = min(k, p)
                left[r][0] -= k
                step.append((r, True, k))
            else:
                k = min(g, 1 if rng.random() < 0.8 else int(rng.integers(2, 4)))
                left[r][1] -= k
                step.append((r, False, k))
        rng.shuffle(step)
        steps.append(step)
    return steps


def check_against_reference(rules, seed, n_requests, kind, max_chunk):
    engine = RuleEngine(rules, probes=Probes(), d_sae=8)
    rng = np.random.default_rng(seed)
    prompts = rng.integers(0, 30, n_requests).tolist()
    gens = rng.integers(0, 30, n_requests).tolist()
    batch = engine.new_batch()
    refs = []
    for r in range(n_requests):
        batch.open(f"req{r}", engine.rules_for(ALL))
        refs.append(reference_session(engine, ALL))
    pos = [0] * n_requests
    width = len(engine.signal_features) + len(engine.probe_names)
    for step in schedule(rng, prompts, gens, max_chunk):
        total = sum(k for _, _, k in step)
        values = values_for(rng, total, width, kind)
        fv = torch.from_numpy(values[:, :len(engine.signal_features)].astype(np.float32))
        pv = torch.from_numpy(values[:, len(engine.signal_features):].astype(np.float32))
        spans, row = [], 0
        for r, prompt, k in step:
            spans.append(RuleSpan(f"req{r}", row, list(range(pos[r], pos[r] + k)), prompt))
            pos[r] += k
            row += k
        got = batch.step(fv, pv, spans)
        for span, hits in zip(spans, got, strict=True):
            lo, hi = span.row_start, span.row_start + len(span.positions)
            want = refs[int(span.key[3:])].step(fv[lo:hi], pv[lo:hi], list(span.positions),
                                                [span.prompt] * (hi - lo))
            assert dump(hits) == dump(want)
    for r in rng.permutation(n_requests).tolist():
        assert dump(batch.finish(f"req{r}")) == dump(refs[r].finish())
        assert batch.finish(f"req{r}") == []
        batch.close(f"req{r}")
    assert len(batch) == 0


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rules=rule_lists(), seed=st.integers(0, 2**32 - 1), n_requests=st.integers(1, 12),
       kind=st.integers(0, 1), max_chunk=st.sampled_from([1, 3, 8, 30]))
def test_batch_matches_reference(rules, seed, n_requests, kind, max_chunk):
    check_against_reference(rules, seed, n_requests, kind, max_chunk)


@pytest.mark.parametrize("n_requests", [1, 20])  # 20: the pool grows past its first slots
def test_shipped_style_pack_matches_reference(n_requests):
    rules = [Rule.model_validate(r) for r in [
        {"name": "probe", "when": {"probe": "deception", "threshold": 1.0}},
        {"name": "any", "when": {"any": [{"feature": f, "threshold": 1.5} for f in range(4)]}},
        {"name": "win", "scope": "both", "when": {"all": [
            {"feature": 1, "threshold": 2.0, "window": {"size": 16, "agg": "sum"}},
            {"probe": "toxicity", "threshold": 0.0, "consecutive": 3}]}},
        {"name": "end", "check": "end", "when": {"probe": "deception", "threshold": 0.1,
                                                 "window": {"agg": "mean"}}},
    ]]
    for seed in range(5):
        check_against_reference(rules, seed, n_requests, kind=seed % 2, max_chunk=40)


def test_reopened_key_and_reused_slot_start_afresh():
    engine = RuleEngine([Rule.model_validate({"name": "r", "when": {
        "feature": 0, "threshold": 2.5, "window": {"size": 3, "agg": "sum"}}})], d_sae=4)
    batch = engine.new_batch()
    batch.open("a", engine.rules_for(ALL))
    ones = torch.ones(2, 1)
    assert batch.step(ones, None, [RuleSpan("a", 0, [0, 1], False)]) == [[]]
    batch.close("a")
    batch.open("b", engine.rules_for(ALL))  # takes a's slot: nothing of a's window is left
    assert batch.step(ones, None, [RuleSpan("b", 0, [0, 1], False)]) == [[]]
    (hit,), = batch.step(ones[:1], None, [RuleSpan("b", 0, [2], False)])
    assert hit.position == 2 and hit.score == 3.0
    batch.open("b", engine.rules_for(ALL))  # opened again: replaced
    assert batch.step(ones, None, [RuleSpan("b", 0, [0, 1], False)]) == [[]]


def test_one_key_twice_in_a_step_goes_in_order():
    engine = RuleEngine([Rule.model_validate({"name": "r", "scope": "both", "when": {
        "feature": 0, "threshold": 1.0, "consecutive": 3}})], d_sae=4)
    batch = engine.new_batch()
    batch.open("a", engine.rules_for(ALL))
    fv = torch.full((3, 1), 2.0)
    got = batch.step(fv, None, [RuleSpan("a", 0, [0, 1], True), RuleSpan("a", 2, [2], False)])
    assert [[h.position for h in hits] for hits in got] == [[], [2]]
    assert "since position 0" in got[1][0].explanation


def test_different_policies_in_one_step():
    rules = [Rule.model_validate({"name": n, "when": {"feature": 0, "threshold": 0.5}})
             for n in ("a", "b")]
    engine = RuleEngine(rules, d_sae=4)
    batch = engine.new_batch()
    batch.open(1, engine.rules_for(Policy(name="pa", rules=["a"])))
    batch.open(2, engine.rules_for(ALL))
    batch.open(3, engine.rules_for(Policy(name="off", rules=["*"], monitoring=False)))
    fv = torch.ones(3, 1)
    got = batch.step(fv, None, [RuleSpan(k, k - 1, [0], False) for k in (1, 2, 3)])
    assert [[h.rule for h in hits] for hits in got] == [["a"], ["a", "b"], []]


def test_step_errors():
    engine = RuleEngine([Rule.model_validate({"name": "p", "when": {
        "probe": "deception", "threshold": 0}})], probes=Probes(), d_sae=4)
    batch = engine.new_batch()
    batch.open("a", engine.rules_for(ALL))
    with pytest.raises(ShapeError, match="probe_values"):
        batch.step(torch.zeros(1, 0), None, [RuleSpan("a", 0, [0], False)])
    with pytest.raises(ShapeError, match="spans"):
        batch.step(torch.zeros(1, 0), torch.zeros(1, 2), [RuleSpan("a", 0, [0, 1], False)])
    with pytest.raises(ShapeError, match="feature_values"):
        batch.step(torch.zeros(1, 3), torch.zeros(1, 2), [RuleSpan("a", 0, [0], False)])
    with pytest.raises(KeyError):
        batch.step(torch.zeros(1, 0), torch.zeros(1, 2), [RuleSpan("nope", 0, [0], False)])
    assert batch.step(torch.zeros(0, 0), None, []) == []
