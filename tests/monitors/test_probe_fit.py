"""Probe fitting (monitors/probe_fit.py) on planted synthetic directions."""

from __future__ import annotations

import pytest
import torch

from latentguard.monitors.discovery import auroc
from latentguard.monitors.probe_fit import (
    Codes,
    choose_by_cv,
    feature_rows,
    feature_scores,
    fit_feature_probe,
    fit_max_probe,
    fit_mean_probe,
    max_scores,
    mean_scores,
)


def test_mean_probe_separates_a_planted_direction() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200, 16, generator=gen) * 5 + 100  # large offset, like real residuals
    y = (torch.arange(200) < 60).long()
    x[y == 1, 3] += 20.0  # 4 standard deviations
    direction, bias = fit_mean_probe(x, y)
    scores = mean_scores(x, direction, bias)
    assert int(direction.abs().argmax()) == 3
    assert float(((scores > 0).long() == y).double().mean()) > 0.95  # balanced at 0
    l2, cv = choose_by_cv(fit_mean_probe, mean_scores, list(x), y,
                       [f"f{i % 10}.py" for i in range(200)], [1e-3, 1e2])
    assert set(cv) == {"0.001", "100"} and l2 in (1e-3, 1e2)
    assert all(v is not None and 0.5 < v <= 1.0 for v in cv.values())


def _texts(n: int, gen: torch.Generator) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Texts of 20-40 tokens; positives carry the signal on ONE token only."""
    rows, labels = [], []
    for i in range(n):
        r = torch.randn(int(torch.randint(20, 40, (1,), generator=gen)), 8, generator=gen)
        r += 50.0
        if i % 3 == 0:
            r[int(torch.randint(0, len(r), (1,), generator=gen)), 5] += 6.0
        rows.append(r)
        labels.append(int(i % 3 == 0))
    return rows, torch.tensor(labels)


def test_max_probe_finds_a_signal_carried_by_one_token() -> None:
    gen = torch.Generator().manual_seed(1)
    (rows, y), (t_rows, t_y) = _texts(300, gen), _texts(150, gen)
    direction, bias = fit_max_probe(rows, y, l2=1e-3)
    assert int(direction.abs().argmax()) == 5 and float(direction[5]) > 0
    s = max_scores(t_rows, direction, bias)
    assert float(auroc(s[t_y == 1], s[t_y == 0])) > 0.97
    # The same signal averaged over 20-40 tokens is much weaker: the case the max probe is for.
    md, mb = fit_mean_probe(torch.stack([r.mean(0) for r in rows]), y)
    ms = mean_scores(torch.stack([r.mean(0) for r in t_rows]), md, mb)
    assert float(auroc(ms[t_y == 1], ms[t_y == 0])) < float(auroc(s[t_y == 1], s[t_y == 0]))


def test_fit_errors_name_the_problem() -> None:
    rows = [torch.randn(3, 4), torch.randn(2, 4)]
    with pytest.raises(ValueError, match="both classes"):
        fit_max_probe(rows, torch.tensor([1, 1]))
    with pytest.raises(ValueError, match="2 texts but 3 labels"):
        fit_max_probe(rows, torch.tensor([1, 0, 1]))
    with pytest.raises(ValueError, match="at least one token"):
        fit_max_probe([torch.randn(3, 4), torch.zeros(0, 4)], torch.tensor([1, 0]))


def _codes(n: int, gen: torch.Generator, d_sae: int = 64, k: int = 4
           ) -> tuple[list[Codes], torch.Tensor]:
    """Sparse codes of 10-30 tokens (k random features each); in positives ONE token has
    feature 10 at 3.0, and feature 11 fires as often in both classes."""
    codes, labels = [], []
    for i in range(n):
        t = int(torch.randint(10, 30, (1,), generator=gen))
        idx = torch.stack([torch.randperm(d_sae - 12, generator=gen)[:k] + 12 for _ in range(t)])
        val = torch.rand(t, k, generator=gen)
        if i % 2:
            idx[int(torch.randint(0, t, (1,), generator=gen)), 0] = 11
        if i % 3 == 0:
            row = int(torch.randint(0, t, (1,), generator=gen))
            idx[row, 1], val[row, 1] = 10, 3.0
        codes.append(Codes(val, idx))
        labels.append(int(i % 3 == 0))
    return codes, torch.tensor(labels)


def test_feature_probe_keeps_few_features_and_finds_the_planted_one() -> None:
    gen = torch.Generator().manual_seed(2)
    (codes, y), (t_codes, t_y) = _codes(240, gen), _codes(120, gen)
    direction, bias = fit_feature_probe(codes, y, d_sae=64, n_features=5)
    assert direction.shape == (64,) and 1 <= int((direction != 0).sum()) <= 5
    assert int(direction.abs().argmax()) == 10 and float(direction[10]) > 0
    s = feature_scores(t_codes, direction, bias)
    assert float(auroc(s[t_y == 1], s[t_y == 0])) > 0.97
    # The score is the max over tokens of a weighted sum of the features, as the sidecar
    # computes it from the gathered activations of the probe's features.
    support = direction.nonzero().flatten()
    dense = feature_rows(t_codes[:3], support, 64)
    torch.testing.assert_close(s[:3], torch.stack([(r @ direction[support] + bias).max()
                                                   for r in dense]))
