"""Evaluation metrics of an SAE over a stream of batches: FVU, L0, dead-feature fraction."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["ReconstructionMetrics", "ReconstructionStats", "fraction_of_variance_unexplained"]


def fraction_of_variance_unexplained(x: Tensor, recon: Tensor) -> float:
    """``sum ||x - recon||^2 / sum ||x - mean(x)||^2`` over the rows of one batch."""
    stats = ReconstructionStats(x.shape[1], 1)
    stats.update(x, recon, torch.zeros(x.shape[0], 1))
    return stats.result().fvu


class ReconstructionMetrics(NamedTuple):
    fvu: float
    """Fraction of variance unexplained (0 = perfect, 1 = no better than the mean row)."""
    l0: float
    """Mean number of non-zero feature activations per token."""
    dead_fraction: float
    """Fraction of features that never fired on the evaluated tokens."""
    tokens: int
    """Number of evaluated tokens (rows)."""


class ReconstructionStats:
    """Accumulates exact totals (float64) so batches of any size give the whole-set metrics."""

    def __init__(self, d_in: int, d_sae: int) -> None:
        self.tokens = 0
        self._sse = 0.0
        self._sum_sq = 0.0
        self._sum = torch.zeros(d_in, dtype=torch.float64)
        self._nonzero = 0
        self._fired = torch.zeros(d_sae, dtype=torch.bool)

    def update(self, x: Tensor, recon: Tensor, acts: Tensor) -> None:
        """Add a batch: rows ``x`` [n, d_in], their reconstruction, activations [n, d_sae]."""
        x64 = x.detach().to(torch.float64)
        self.tokens += x.shape[0]
        self._sse += float((x64 - recon.detach().to(torch.float64)).pow(2).sum())
        self._sum_sq += float(x64.pow(2).sum())
        self._sum += x64.sum(dim=0).cpu()
        active = acts.detach() != 0
        self._nonzero += int(active.sum())
        self._fired |= active.any(dim=0).cpu()

    def result(self) -> ReconstructionMetrics:
        if self.tokens == 0:
            raise ValueError("no tokens were evaluated")
        total_variance = self._sum_sq - float(self._sum.pow(2).sum()) / self.tokens
        fvu = self._sse / total_variance if total_variance > 0 else float("nan")
        return ReconstructionMetrics(
            fvu=fvu,
            l0=self._nonzero / self.tokens,
            dead_fraction=1.0 - float(self._fired.float().mean()),
            tokens=self.tokens,
        )
