"""JumpReLU SAE: ``pre * (pre > threshold)`` after ReLU, with a per-feature threshold."""

from __future__ import annotations

from torch import Tensor

from latentguard.monitors.sae.base import SAE

__all__ = ["JumpReLUSAE"]


class JumpReLUSAE(SAE):
    architecture = "jumprelu"
    tensor_shapes = {**SAE.tensor_shapes, "threshold": ("d_sae",)}

    def _activate(self, sae_in: Tensor) -> Tensor:
        pre = self._pre(sae_in)
        return pre.masked_fill_(pre <= self._tensors["threshold"], 0.0).relu_()
