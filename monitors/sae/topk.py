"""TopK SAE: keep the ``k`` largest pre-activations per row, then ReLU (SAELens / sparsify)."""

from __future__ import annotations

import torch
from torch import Tensor

from latentguard.monitors.errors import SAEFormatError
from latentguard.monitors.sae.base import SAE, MonitorEncoding

__all__ = ["TopKSAE"]


class TopKSAE(SAE):
    architecture = "topk"

    def _check_config(self) -> None:
        k = self.cfg.k
        if k is None or not 1 <= k <= self.d_sae:
            raise SAEFormatError(self.source, f"topk SAE needs 1 <= k <= d_sae, got k={k}", key="k")

    @property
    def k(self) -> int:
        return self.cfg.k  # type: ignore[return-value]

    def _activate(self, sae_in: Tensor) -> Tensor:
        pre = self._pre(sae_in)
        values, indices = pre.topk(self.k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter_(-1, indices, values.relu_())

    @torch.inference_mode()
    def encode_for_monitor(self, x: Tensor, feature_idx: Tensor, k: int) -> MonitorEncoding:
        """Sparse path: no dense ``[n, d_sae]`` activations when ``k <= self.k``."""
        if k > self.k:
            return super().encode_for_monitor(x, feature_idx, k)
        idx = self.check_features(feature_idx)
        self.check_k(k)
        values, indices = self._pre(self.process_input(x)).topk(self.k, dim=-1, sorted=True)
        values.relu_()
        match = indices.unsqueeze(2) == idx.view(1, 1, -1)  # [n, self.k, len(idx)]
        selected = (values.unsqueeze(2) * match).sum(dim=1)
        return MonitorEncoding(selected, values[:, :k], indices[:, :k])
