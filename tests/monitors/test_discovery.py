"""Feature discovery on synthetic activations where the separating feature is known."""

from __future__ import annotations

import itertools

import pytest
import torch

from latentguard.monitors.discovery import (
    auroc,
    pool,
    rank_features,
    recall_at_fpr,
    threshold_at_fpr,
    top_contexts,
)
from latentguard.monitors.errors import ShapeError, UnknownFeatureError


def brute_auroc(pos: list[float], neg: list[float]) -> float:
    wins = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p, q in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auroc_matches_pairwise_count_with_ties() -> None:
    gen = torch.Generator().manual_seed(0)
    pos = torch.randint(0, 4, (13, 5), generator=gen).float()  # many ties, as sparse SAEs give
    neg = torch.randint(0, 3, (9, 5), generator=gen).float()
    got = auroc(pos, neg)
    for j in range(5):
        assert float(got[j]) == pytest.approx(brute_auroc(pos[:, j].tolist(), neg[:, j].tolist()))
    assert float(auroc(torch.tensor([2.0, 3.0]), torch.tensor([0.0, 1.0]))) == 1.0
    assert float(auroc(torch.zeros(4), torch.zeros(3))) == 0.5


def synthetic_sets(n: int = 40, d: int = 32, feature: int = 17) -> tuple[list, list]:
    """Texts of random length with sparse noise; A texts fire ``feature`` at one token."""
    gen = torch.Generator().manual_seed(1)

    def text(fire: bool) -> torch.Tensor:
        t = int(torch.randint(3, 12, (1,), generator=gen))
        acts = torch.rand(t, d, generator=gen) * (torch.rand(t, d, generator=gen) < 0.1)
        acts[:, feature] = 0.0
        if fire:
            acts[int(torch.randint(0, t, (1,), generator=gen)), feature] = 2.0 + float(
                torch.rand(1, generator=gen))
        return acts

    return [text(True) for _ in range(n)], [text(False) for _ in range(n)]


def test_rank_features_finds_the_separating_feature() -> None:
    a, b = synthetic_sets()
    ranked = rank_features(pool(a, "max"), pool(b, "max"), top=5)
    assert ranked[0].index == 17
    assert ranked[0].auroc == 1.0
    assert ranked[0].mean_diff > 2.0
    assert ranked[0].frac_active_a == 1.0 and ranked[0].frac_active_b == 0.0
    assert all(r.auroc < 0.8 for r in ranked[1:])
    # Reversed sets: the feature separates the other way; "both" still finds it.
    assert rank_features(pool(b), pool(a), top=1, direction="both")[0].index == 17
    assert rank_features(pool(b), pool(a), top=1)[0].index != 17
    assert rank_features(pool(a, "mean"), pool(b, "mean"), top=1)[0].index == 17


def test_top_contexts_points_at_the_firing_token() -> None:
    a, b = synthetic_sets()
    texts = b[:5] + a[:3]
    found = top_contexts(texts, 17, n=10)
    assert sorted(c.text for c in found) == [5, 6, 7]  # B texts never fire it
    assert [c.value for c in found] == sorted((c.value for c in found), reverse=True)
    for c in found:
        assert float(texts[c.text][c.position, 17]) == c.value
        assert c.values.shape == (texts[c.text].shape[0],)
    assert len(top_contexts(texts, 17, n=2)) == 2
    assert top_contexts([t[:, 17] for t in texts], 17, n=1)[0].value == found[0].value
    with pytest.raises(UnknownFeatureError):
        top_contexts(texts, 99)


def test_threshold_and_recall_at_fpr() -> None:
    neg = torch.arange(200, dtype=torch.float32)  # 0..199
    t = threshold_at_fpr(neg, 0.01)
    assert t == 197.0 and int((neg > t).sum()) == 2
    recall, t2 = recall_at_fpr(torch.tensor([150.0, 198.5, 300.0, 400.0]), neg, 0.01)
    assert t2 == t and recall == 0.75
    assert threshold_at_fpr(torch.zeros(50), 0.01) == 0.0  # ties: nothing above 0


def test_bad_shapes_are_named() -> None:
    with pytest.raises(ShapeError, match="neg"):
        auroc(torch.zeros(3, 2), torch.zeros(3, 4))
    with pytest.raises(ShapeError, match="acts"):
        pool([])
    with pytest.raises(ShapeError, match="acts\\[0\\]"):
        pool([torch.zeros(0, 3)])
