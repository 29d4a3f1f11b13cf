"""Fitting linear probes on labelled texts: the direction and bias a :class:`Probe` file holds.

Two ways to pool a text's per-token residual rows into one score, each matching a rule:

- :func:`fit_mean_probe`: logistic regression on the **mean** row. The mean of per-token probe
  scores is the probe of the mean, so a rule ``{probe: P, window: {agg: mean}}`` sees exactly
  this score.
- :func:`fit_max_probe`: the text's score is the **max over tokens** of the per-token score
  (trained through a smooth maximum, log-mean-exp, since the max has a gradient at one token
  only). A rule ``{probe: P, threshold: T}`` with no window fires on the first token above
  ``T``: exactly when this score is above ``T``. It suits properties carried by a few tokens of
  a text (one ``eval(`` in a function), which the mean dilutes.

Both weigh the two classes equally, fit on standardised inputs with an L2 penalty and fold the
standardisation back, so the score is ``rows @ direction + bias`` (a logit) on raw rows.
:func:`choose_l2` picks the penalty by cross-validation with folds split by group (source file,
country, ...), never by the held-out split.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from latentguard.monitors.discovery import auroc

__all__ = ["choose_l2", "fit_max_probe", "fit_mean_probe", "max_scores", "mean_scores"]

#: (texts, labels, l2) -> (direction, bias); texts are rows [T, d] each (a tensor [n, d] of
#: means for the mean probe).
Fit = Callable[[Sequence[Tensor], Tensor, float], tuple[Tensor, float]]
Score = Callable[[Sequence[Tensor], Tensor, float], Tensor]


def _pos_weight(y: Tensor) -> Tensor:
    n_pos = float(y.sum())
    if not 0 < n_pos < len(y):
        raise ValueError(f"labels: need both classes, got {int(n_pos)} positive of {len(y)}")
    return torch.tensor((len(y) - n_pos) / n_pos, dtype=torch.float64)


def _unfold(w: Tensor, b: Tensor, mu: Tensor, sd: Tensor) -> tuple[Tensor, float]:
    direction = (w / sd).detach()
    return direction.float(), float(b.detach() - (mu / sd * w.detach()).sum())


def fit_mean_probe(x: Sequence[Tensor] | Tensor, y: Tensor, l2: float = 1e-2,
                   max_iter: int = 500) -> tuple[Tensor, float]:
    """Logistic regression ``y ~ x`` on one row per text (``[n, d]``): (direction, bias)."""
    x = torch.stack(list(x)) if not isinstance(x, Tensor) else x
    x, y = x.detach().clone().double(), y.detach().clone().double()
    mu, sd = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - mu) / sd
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    pos_weight = _pos_weight(y)
    opt = torch.optim.LBFGS([w, b], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(z @ w + b, y, pos_weight=pos_weight)
        loss = loss + l2 * w.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return _unfold(w, b, mu, sd)


def fit_max_probe(rows: Sequence[Tensor], y: Tensor, l2: float = 1e-2, steps: int = 300,
                  lr: float = 0.02, sharpness: float = 4.0, seed: int = 0
                  ) -> tuple[Tensor, float]:
    """A per-token probe whose text score is the max over the text's tokens: (direction, bias).

    Trained with Adam on the log-mean-exp of ``sharpness`` times the per-token logits (divided
    by ``sharpness``): between the mean (sharpness -> 0) and the max (-> infinity).
    """
    if len(rows) != len(y):
        raise ValueError(f"rows: {len(rows)} texts but {len(y)} labels")
    if any(len(r) == 0 for r in rows):
        raise ValueError("rows: every text needs at least one token")
    torch.manual_seed(seed)
    cat = torch.cat([r.float() for r in rows])
    lengths = torch.tensor([len(r) for r in rows])
    segment = torch.repeat_interleave(torch.arange(len(rows)), lengths)
    mu, sd = cat.mean(0), cat.std(0).clamp_min(1e-6)
    z = (cat - mu) / sd
    y = y.detach().float()
    pos_weight = _pos_weight(y).float()
    w = torch.zeros(cat.shape[1], requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=lr)
    n = len(rows)
    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad()
            s = (z @ w + b) * sharpness
            peak = torch.full((n,), -torch.inf).scatter_reduce(0, segment, s.detach(), "amax")
            total = torch.zeros(n).index_add(0, segment, (s - peak[segment]).exp())
            pooled = (total.log() + peak - lengths.log()) / sharpness
            loss = F.binary_cross_entropy_with_logits(pooled, y, pos_weight=pos_weight)
            (loss + l2 * w.square().sum()).backward()
            opt.step()
    return _unfold(w.double(), b.double(), mu.double(), sd.double())


def max_scores(rows: Sequence[Tensor], direction: Tensor, bias: float) -> Tensor:
    """Each text's largest per-token score (what a no-window probe rule compares)."""
    return torch.stack([(r.float() @ direction + bias).max() for r in rows])


def mean_scores(x: Sequence[Tensor] | Tensor, direction: Tensor, bias: float) -> Tensor:
    """Scores of one row per text (the mean rows of :func:`fit_mean_probe`)."""
    x = torch.stack(list(x)) if not isinstance(x, Tensor) else x
    return x.float() @ direction + bias


def choose_l2(fit: Fit, score: Score, x: Sequence[Tensor], y: Tensor, groups: Sequence[str],
              grid: Sequence[float], folds: int = 3) -> tuple[float, dict[str, float | None]]:
    """The L2 penalty with the best mean AUROC over ``folds`` folds split by ``groups``."""
    fold = torch.tensor([int(hashlib.sha256(g.encode()).hexdigest()[:8], 16) % folds
                         for g in groups])
    results: dict[str, float | None] = {}
    for l2 in grid:
        aucs = []
        for k in range(folds):
            fit_idx = (fold != k).nonzero().flatten().tolist()
            held_idx = (fold == k).nonzero().flatten().tolist()
            yf, yh = y[fit_idx], y[held_idx]
            if not (yf.any() and (yf == 0).any() and yh.any() and (yh == 0).any()):
                continue
            direction, bias = fit([x[i] for i in fit_idx], yf, l2)
            s = score([x[i] for i in held_idx], direction, bias)
            aucs.append(float(auroc(s[yh == 1], s[yh == 0])))
        results[f"{l2:g}"] = sum(aucs) / len(aucs) if aucs else None
    valid = {k: v for k, v in results.items() if v is not None}
    if not valid:
        return float(grid[len(grid) // 2]), results
    return float(max(valid, key=lambda k: valid[k])), results
