"""Standard (ReLU) SAE: ``relu((x - b_dec) @ W_enc + b_enc)``."""

from __future__ import annotations

from torch import Tensor

from latentguard.monitors.sae.base import SAE

__all__ = ["StandardSAE"]


class StandardSAE(SAE):
    architecture = "standard"

    def _activate(self, sae_in: Tensor) -> Tensor:
        return self._pre(sae_in).relu_()
