"""Gated SAE (Rajamanoharan et al. 2024), SAELens layout.

gate = (x' @ W_enc + b_gate) > 0; magnitude = relu(x' @ (W_enc * exp(r_mag)) + b_mag).
Since ``exp(r_mag)`` scales columns, both paths share one matmul.
"""

from __future__ import annotations

from torch import Tensor

from latentguard.monitors.sae.base import SAE

__all__ = ["GatedSAE"]


class GatedSAE(SAE):
    architecture = "gated"
    tensor_shapes = {
        "W_enc": ("d_in", "d_sae"),
        "b_gate": ("d_sae",),
        "b_mag": ("d_sae",),
        "r_mag": ("d_sae",),
        "W_dec": ("d_sae", "d_in"),
        "b_dec": ("d_in",),
    }

    def _prepare(self) -> None:
        self._mag_scale = self._tensors["r_mag"].exp()
        self._neg_b_gate = -self._tensors["b_gate"]

    def _activate(self, sae_in: Tensor) -> Tensor:
        z = sae_in @ self._tensors["W_enc"]
        closed = z <= self._neg_b_gate  # gate pre-activation z + b_gate <= 0
        z.mul_(self._mag_scale).add_(self._tensors["b_mag"]).relu_()
        return z.masked_fill_(closed, 0.0)
