"""Probe fitting (monitors/probe_fit.py) on planted synthetic directions."""

from __future__ import annotations

import pytest
import torch

from latentguard.monitors.discovery import auroc
from latentguard.monitors.probe_fit import (
    choose_l2,
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
    l2, cv = choose_l2(fit_mean_probe, mean_scores, list(x), y,
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
