"""TopK SAE: keep the ``k`` largest pre-activations per row, then ReLU (SAELens / sparsify)."""

from __future__ import annotations

import torch
from torch import Tensor

from latentguard.monitors.errors import SAEFormatError
from latentguard.monitors.sae.base import SAE

__all__ = ["TopKSAE"]


class TopKSAE(SAE):
    architecture = "topk"

    def _check_config(self) -> None:
        k = self.cfg.k
        if k is None or not 1 <= k <= self.d_sae:
            raise SAEFormatError(self.source, f"topk SAE needs 1 <= k <= d_sae, got k={k}", key="k")

    def _activate(self, sae_in: Tensor) -> Tensor:
        pre = self._pre(sae_in)
        values, indices = pre.topk(self.cfg.k, dim=-1, sorted=False)  # type: ignore[arg-type]
        return torch.zeros_like(pre).scatter_(-1, indices, values.relu_())
