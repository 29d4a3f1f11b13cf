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

:func:`fit_feature_probe` is the max-over-tokens probe on the SAE's feature activations instead
of the residual: a weighted sum of at most ``n_features`` SAE features per token (a features
probe, ``ProbeMeta.input = "features"``), an SAE rule whose weights each name a feature.
:func:`screen_features` fits all features at once on the per-token top-k codes; the
``n_features`` largest weights are kept and refit alone with :func:`fit_max_probe`.

:func:`choose_by_cv` picks a setting (the penalty, the number of features) by cross-validation
with folds split by group (source file, country, ...), never by the held-out split.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from latentguard.monitors.discovery import auroc

__all__ = [
    "Codes",
    "choose_by_cv",
    "feature_rows",
    "feature_scores",
    "fit_feature_probe",
    "fit_max_probe",
    "fit_mean_probe",
    "max_scores",
    "mean_scores",
    "screen_features",
]

#: (texts, labels, l2) -> (direction, bias); texts are rows [T, d] each (a tensor [n, d] of
#: means for the mean probe).
Fit = Callable[[Sequence[Tensor], Tensor, float], tuple[Tensor, float]]
Score = Callable[[Sequence[Tensor], Tensor, float], Tensor]


class Codes(NamedTuple):
    """One text's sparse SAE code: the ``k`` largest activations of each token."""

    values: Tensor
    """[T, k] activations (zeros allowed)."""
    indices: Tensor
    """[T, k] their feature indices (int64)."""


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
    _check_texts(rows, y, [len(r) for r in rows])
    torch.manual_seed(seed)
    cat = torch.cat([r.float() for r in rows])
    mu, sd = cat.mean(0), cat.std(0).clamp_min(1e-6)
    z = (cat - mu) / sd
    w, b = _fit_smooth_max(lambda w, b: z @ w + b, cat.shape[1], [len(r) for r in rows], y, l2,
                           steps, lr, sharpness)
    return _unfold(w.double(), b.double(), mu.double(), sd.double())


def _fit_smooth_max(logits: Callable[[Tensor, Tensor], Tensor], width: int,
                    lengths: Sequence[int], y: Tensor, l2: float, steps: int, lr: float,
                    sharpness: float) -> tuple[Tensor, Tensor]:
    """Adam on the class-balanced logistic loss of each text's smooth max of the per-token
    ``logits(w, b)`` (all texts' tokens concatenated) plus ``l2 * |w|^2``: (w, b)."""
    n_tokens = torch.tensor(list(lengths))
    segment = torch.repeat_interleave(torch.arange(len(n_tokens)), n_tokens)
    yf = y.detach().float()
    pos_weight = _pos_weight(yf).float()
    w = torch.zeros(width, requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad()
            pooled = _smooth_max(logits(w, b), segment, n_tokens, sharpness)
            loss = F.binary_cross_entropy_with_logits(pooled, yf, pos_weight=pos_weight)
            (loss + l2 * w.square().sum()).backward()
            opt.step()
    return w.detach(), b.detach()


def _smooth_max(logits: Tensor, segment: Tensor, lengths: Tensor, sharpness: float) -> Tensor:
    """Per text, ``log(mean(exp(sharpness * logits))) / sharpness`` over its tokens."""
    n = len(lengths)
    s = logits * sharpness
    peak = torch.full((n,), -torch.inf).scatter_reduce(0, segment, s.detach(), "amax")
    total = torch.zeros(n).index_add(0, segment, (s - peak[segment]).exp())
    return (total.log() + peak - lengths.log()) / sharpness


def _check_texts(texts: Sequence[object], y: Tensor, lengths: Sequence[int]) -> None:
    if len(texts) != len(y):
        raise ValueError(f"rows: {len(texts)} texts but {len(y)} labels")
    if any(n == 0 for n in lengths):
        raise ValueError("rows: every text needs at least one token")


def feature_rows(codes: Sequence[Codes], support: Tensor, d_sae: int) -> list[Tensor]:
    """Each text's dense activations ``[T, len(support)]`` of the ``support`` features."""
    column = torch.full((d_sae,), len(support), dtype=torch.int64)
    column[support] = torch.arange(len(support))
    out = []
    for c in codes:
        dense = torch.zeros(len(c.values), len(support) + 1)
        dense.scatter_add_(1, column[c.indices], c.values.float())
        out.append(dense[:, :-1])
    return out


def feature_scores(codes: Sequence[Codes], direction: Tensor, bias: float) -> Tensor:
    """Each text's largest per-token score of a features probe (``direction`` ``[d_sae]``)."""
    return torch.stack([((c.values.float() * direction[c.indices]).sum(1) + bias).max()
                        for c in codes])


def screen_features(codes: Sequence[Codes], y: Tensor, d_sae: int, l2: float = 1e-3,
                    steps: int = 400, lr: float = 0.05, sharpness: float = 4.0, seed: int = 0
                    ) -> Tensor:
    """Weights ``[d_sae]`` of one sparse max-over-tokens fit on every feature at once.

    Each feature is scaled by its largest train activation, so one penalty suits all and the
    weights' magnitudes rank the features; features never active in training stay at 0.
    """
    _check_texts(codes, y, [len(c.values) for c in codes])
    torch.manual_seed(seed)
    values = torch.cat([c.values.float() for c in codes])
    indices = torch.cat([c.indices for c in codes])
    scale = torch.zeros(d_sae).scatter_reduce(0, indices.flatten(), values.flatten(), "amax")
    scaled = values / scale.clamp_min(1e-6)[indices]
    w, _ = _fit_smooth_max(lambda w, b: (scaled * w[indices]).sum(1) + b, d_sae,
                           [len(c.values) for c in codes], y, l2, steps, lr, sharpness)
    return w


def fit_feature_probe(codes: Sequence[Codes], y: Tensor, d_sae: int, n_features: int = 64,
                      l2: float = 1e-2, screened: Tensor | None = None, sharpness: float = 4.0,
                      seed: int = 0) -> tuple[Tensor, float]:
    """A features probe: per token, a weighted sum of at most ``n_features`` SAE features; the
    text's score is its max over tokens. Returns (direction ``[d_sae]``, bias).

    The features are the ``n_features`` largest weights of :func:`screen_features` (pass
    ``screened`` to reuse one screening for several ``n_features``); the refit on them alone is
    :func:`fit_max_probe`.
    """
    if screened is None:
        screened = screen_features(codes, y, d_sae, sharpness=sharpness, seed=seed)
    support = screened.abs().argsort(descending=True)[:n_features].sort().values
    support = support[screened[support] != 0]
    if not support.numel():
        raise ValueError("codes: no feature is active in the training texts")
    sub, bias = fit_max_probe(feature_rows(codes, support, d_sae), y, l2, sharpness=sharpness,
                              seed=seed)
    direction = torch.zeros(d_sae)
    direction[support] = sub
    return direction, bias


def max_scores(rows: Sequence[Tensor], direction: Tensor, bias: float) -> Tensor:
    """Each text's largest per-token score (what a no-window probe rule compares)."""
    return torch.stack([(r.float() @ direction + bias).max() for r in rows])


def mean_scores(x: Sequence[Tensor] | Tensor, direction: Tensor, bias: float) -> Tensor:
    """Scores of one row per text (the mean rows of :func:`fit_mean_probe`)."""
    x = torch.stack(list(x)) if not isinstance(x, Tensor) else x
    return x.float() @ direction + bias


def choose_by_cv(fit: Fit, score: Score, x: Sequence[Any], y: Tensor, groups: Sequence[str],
                 grid: Sequence[float], folds: int = 3) -> tuple[float, dict[str, float | None]]:
    """The setting in ``grid`` (``fit``'s third argument: an L2 penalty, a number of features)
    with the best mean AUROC over ``folds`` folds split by ``groups``."""
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
