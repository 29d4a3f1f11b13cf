"""JumpReLU SAE: ``pre * (pre > threshold)`` after ReLU, with a per-feature threshold."""

from __future__ import annotations

from torch import Tensor

from latentguard.monitors.sae.base import SAE

__all__ = ["JumpReLUSAE"]


class JumpReLUSAE(SAE):
    architecture = "jumprelu"
    tensor_shapes = {**SAE.tensor_shapes, "threshold": ("d_sae",)}

    def _prepare(self) -> None:
        # With non-negative thresholds the kept values are > 0 already: ReLU is a no-op.
        self._needs_relu = bool((self._tensors["threshold"] < 0).any())

    def _activate(self, sae_in: Tensor) -> Tensor:
        pre = self._pre(sae_in)
        pre.masked_fill_(pre <= self._tensors["threshold"], 0.0)
        return pre.relu_() if self._needs_relu else pre
