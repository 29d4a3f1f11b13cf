"""Hyperparameters of TopK SAE training (the math only; the data side lives in the server)."""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["TrainerConfig"]


class TrainerConfig(BaseModel):
    """TopK SAE training settings; defaults follow Gao et al. (2024) and sparsify."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    d_sae: int = Field(default=16384, gt=0)
    """Number of SAE features (latents)."""
    k: int = Field(default=32, gt=0)
    """Active features per token (TopK)."""
    batch_size: int = Field(default=4096, gt=0)
    """Activation rows per optimiser step."""
    lr: float | None = Field(default=None, gt=0)
    """Adam learning rate; default 2e-4 / sqrt(d_sae / 2**14) (the paper's scaling law)."""
    lr_warmup_steps: int = Field(default=100, ge=0)
    """Linear warm-up steps (cut to a tenth of the run when the run is short)."""
    lr_decay_fraction: float = Field(default=0.2, ge=0, le=1)
    """Final fraction of the run over which the learning rate decays linearly to zero."""
    auxk_alpha: float = Field(default=1 / 32, ge=0)
    """Weight of the AuxK dead-feature loss (0 switches it off)."""
    k_aux: int | None = Field(default=None, gt=0)
    """Dead features used by AuxK; default d_in // 2 (sparsify's heuristic)."""
    dead_after_tokens: int = Field(default=1_000_000, gt=0)
    """A feature that has not fired for this many training tokens counts as dead."""
    init_seed: int = 0
    """Seed for the initial weights."""

    @model_validator(mode="after")
    def _check(self) -> TrainerConfig:
        if self.k > self.d_sae:
            raise ValueError(f"k: {self.k} is larger than d_sae ({self.d_sae})")
        if self.k_aux is not None and self.k_aux > self.d_sae:
            raise ValueError(f"k_aux: {self.k_aux} is larger than d_sae ({self.d_sae})")
        return self

    def learning_rate(self) -> float:
        """The configured learning rate, or the default scaled by the number of features."""
        return self.lr if self.lr is not None else 2e-4 / math.sqrt(self.d_sae / 2**14)
