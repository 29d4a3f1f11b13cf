"""Shuffled mini-batches from a buffer of activation rows (deterministic given a seed)."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

__all__ = ["shuffled_batches"]


def shuffled_batches(rows: Tensor, batch_size: int, seed: int, skip: int = 0) -> Iterator[Tensor]:
    """Full batches of ``rows`` in an order fixed by ``seed``; the remainder is dropped.

    ``skip`` batches are left out at the start, so a resumed run continues the same sequence.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size: must be positive, got {batch_size}")
    order = torch.randperm(rows.shape[0], generator=torch.Generator().manual_seed(seed))
    for start in range(skip * batch_size, rows.shape[0] - batch_size + 1, batch_size):
        yield rows[order[start:start + batch_size]]
