"""One engine step as the sidecar's domain sees it (converted from a `StepBatch` at the edge):
requests opened, each request's rows, requests closed."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from latentguard.monitors.rules import Steer

__all__ = ["RequestClose", "RequestOpen", "Span", "Step"]


@dataclass(frozen=True)
class RequestOpen:
    tag: str
    policy: str = ""
    """Empty: the default policy."""
    model: str = ""
    prompt_tokens: int = 0
    prompt_text: str = ""
    steer: Steer | None = None
    """Steering the request asked for (the plugin applies it; recorded here)."""


@dataclass(frozen=True)
class Span:
    """One request's rows in the step: ``rows[row_start : row_start + len(positions)]``, all
    prompt rows or all generated rows."""

    tag: str
    row_start: int
    positions: list[int]
    token_ids: list[int]
    prefill: bool

    @property
    def stop(self) -> int:
        return self.row_start + len(self.positions)


@dataclass(frozen=True)
class RequestClose:
    tag: str
    finish_reason: str = ""
    completion_tokens: int = 0
    completion_text: str = ""
    monitoring_gap: bool = False


@dataclass(frozen=True)
class Step:
    number: int
    rows: Tensor = field(default_factory=lambda: torch.empty(0, 0))
    """[n, d_model] fp32 residual rows of all spans."""
    opened: list[RequestOpen] = field(default_factory=list)
    spans: list[Span] = field(default_factory=list)
    closed: list[RequestClose] = field(default_factory=list)
