"""Feature discovery: which SAE features separate two sets of texts, and where a feature fires.

Pure tensor code: activations in, rankings out. A text's activations are ``[T, d_sae]`` (one row
per token); :func:`pool` reduces each text to one row (``max`` or ``mean`` over its tokens), and
:func:`rank_features` scores every feature on pooled rows of set A (the positives) against set B
by AUROC (the probability that a random A text scores above a random B text, ties counting
half: the Mann-Whitney U statistic, computed from mid-ranks, so no scikit-learn is needed) and by
the difference of the means. :func:`top_contexts` finds the texts and token positions where one
feature fires most. :func:`auroc` and :func:`recall_at_fpr` also score any single detector.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from latentguard.monitors.errors import ShapeError, UnknownFeatureError

__all__ = [
    "Context",
    "FeatureScore",
    "Pooling",
    "auroc",
    "pool",
    "rank_features",
    "recall_at_fpr",
    "threshold_at_fpr",
    "top_contexts",
]

Pooling = Literal["max", "mean"]


@dataclass(frozen=True)
class FeatureScore:
    """How well one feature separates set A (positives) from set B."""

    index: int
    auroc: float
    """P(pooled activation on a random A text > on a random B text), ties counting half."""
    mean_a: float
    mean_b: float
    frac_active_a: float
    """Fraction of A texts where the pooled activation is above zero."""
    frac_active_b: float

    @property
    def mean_diff(self) -> float:
        return self.mean_a - self.mean_b


@dataclass(frozen=True)
class Context:
    """One place where a feature fires: text ``text`` at token ``position``."""

    text: int
    """Index of the text in the sequence given."""
    position: int
    """Token position of the text's strongest activation."""
    value: float
    values: Tensor
    """[T] the feature's activation at every token of the text (for highlighting)."""


def _check_2d(x: Tensor, field: str) -> Tensor:
    if not isinstance(x, Tensor) or x.ndim != 2 or not x.is_floating_point():
        got = f"{x.dtype} {list(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise ShapeError(field, f"expected a 2-D float tensor, got {got}")
    return x


def pool(acts: Sequence[Tensor], how: Pooling = "max") -> Tensor:
    """[n, d] rows: each text's ``[T, d]`` activations reduced over its tokens."""
    if how not in ("max", "mean"):
        raise ShapeError("pooling", f"expected 'max' or 'mean', got {how!r}")
    rows = []
    for i, a in enumerate(acts):
        _check_2d(a, f"acts[{i}]")
        if a.shape[0] == 0:
            raise ShapeError(f"acts[{i}]", "a text with no tokens")
        rows.append(a.float().amax(0) if how == "max" else a.float().mean(0))
    if not rows:
        raise ShapeError("acts", "no texts")
    return torch.stack(rows)


def _midranks(x: Tensor) -> Tensor:
    """Ranks (1-based) of each column's values, tied values sharing their mean rank."""
    n, d = x.shape
    sorted_x, order = x.sort(dim=0)
    new_group = torch.ones_like(sorted_x, dtype=torch.bool)
    new_group[1:] = sorted_x[1:] != sorted_x[:-1]
    group = new_group.long().cumsum(0) - 1 + torch.arange(d) * n  # unique over columns
    pos = torch.arange(1, n + 1, dtype=torch.float64).unsqueeze(1).expand(n, d)
    mean_rank = torch.zeros(n * d, dtype=torch.float64).scatter_reduce_(
        0, group.flatten(), pos.flatten(), reduce="mean", include_self=False)
    ranks = torch.empty(n, d, dtype=torch.float64)
    ranks.scatter_(0, order, mean_rank[group])
    return ranks


def auroc(pos: Tensor, neg: Tensor) -> Tensor:
    """AUROC of each column as a detector of ``pos`` rows against ``neg`` rows.

    ``pos`` is ``[n_pos, d]`` (or ``[n_pos]``), ``neg`` ``[n_neg, d]`` (or ``[n_neg]``); returns
    ``[d]`` (or a scalar) float64. Exact, with ties counted half (Mann-Whitney U / n_pos n_neg).
    """
    vector = pos.ndim == 1 and neg.ndim == 1
    pos = _check_2d(pos.unsqueeze(1) if pos.ndim == 1 else pos, "pos")
    neg = _check_2d(neg.unsqueeze(1) if neg.ndim == 1 else neg, "neg")
    if pos.shape[1] != neg.shape[1]:
        raise ShapeError("neg", f"width {neg.shape[1]} differs from pos width {pos.shape[1]}")
    n_pos, n_neg = pos.shape[0], neg.shape[0]
    if not n_pos or not n_neg:
        raise ShapeError("pos" if not n_pos else "neg", "needs at least one row")
    ranks = _midranks(torch.cat([pos, neg]).double())
    u = ranks[:n_pos].sum(0) - n_pos * (n_pos + 1) / 2
    out = u / (n_pos * n_neg)
    return out[0] if vector else out


def threshold_at_fpr(neg: Tensor, fpr: float = 0.01) -> float:
    """The lowest threshold ``t`` with at most ``fpr`` of ``neg`` strictly above it.

    A detector firing on ``score > t`` then has a false-positive rate of at most ``fpr`` on
    these negatives (exactly ``floor(fpr * n)`` of them can be above ``t``, fewer with ties).
    """
    if neg.ndim != 1 or not neg.numel():
        raise ShapeError("neg", f"expected a non-empty 1-D tensor, got {list(neg.shape)}")
    if not 0.0 <= fpr < 1.0:
        raise ShapeError("fpr", f"must be in [0, 1), got {fpr}")
    allowed = int(fpr * neg.numel() + 1e-9)
    return float(neg.double().sort(descending=True).values[allowed])


def recall_at_fpr(pos: Tensor, neg: Tensor, fpr: float = 0.01) -> tuple[float, float]:
    """(recall, threshold): the fraction of ``pos`` above the ``fpr`` threshold of ``neg``."""
    t = threshold_at_fpr(neg, fpr)
    return float((pos.double() > t).double().mean()), t


def rank_features(a: Tensor, b: Tensor, top: int = 20,
                  direction: Literal["a", "both"] = "a") -> list[FeatureScore]:
    """The ``top`` features best separating pooled rows ``a`` ``[n_a, d]`` from ``b``.

    ``direction="a"``: features higher on A first (AUROC descending); ``"both"``: either way
    (``|AUROC - 0.5|`` descending). Ties are broken by the mean difference, then the index.
    """
    _check_2d(a, "a")
    _check_2d(b, "b")
    scores = auroc(a, b)
    diff = a.double().mean(0) - b.double().mean(0)
    key = scores if direction == "a" else (scores - 0.5).abs()
    tie = diff if direction == "a" else diff.abs()
    # Stable sorts: by tie-breaker first, then by the key.
    order = tie.sort(descending=True, stable=True).indices
    order = order[key[order].sort(descending=True, stable=True).indices][:max(top, 0)]
    mean_a, mean_b = a.double().mean(0), b.double().mean(0)
    act_a, act_b = (a > 0).double().mean(0), (b > 0).double().mean(0)
    return [FeatureScore(index=int(i), auroc=float(scores[i]), mean_a=float(mean_a[i]),
                         mean_b=float(mean_b[i]), frac_active_a=float(act_a[i]),
                         frac_active_b=float(act_b[i])) for i in order]


def top_contexts(acts: Sequence[Tensor], feature: int, n: int = 10) -> list[Context]:
    """The ``n`` texts where ``feature`` fires most, each at its strongest token.

    ``acts`` holds each text's ``[T, d_sae]`` activations, or already the feature's ``[T]``
    column. Texts where the feature never exceeds zero are left out.
    """
    found = []
    for i, a in enumerate(acts):
        if a.ndim == 2:
            if not 0 <= feature < a.shape[1]:
                raise UnknownFeatureError(f"feature {feature} out of range 0..{a.shape[1] - 1}")
            col = a[:, feature]
        elif a.ndim == 1:
            col = a
        else:
            raise ShapeError(f"acts[{i}]", f"expected [T, d_sae] or [T], got {list(a.shape)}")
        if not col.numel():
            continue
        value, position = col.float().max(0)
        if float(value) > 0:
            found.append(Context(i, int(position), float(value), col.detach().float()))
    found.sort(key=lambda c: (-c.value, c.text))
    return found[:max(n, 0)]
