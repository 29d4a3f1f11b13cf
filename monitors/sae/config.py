"""The configuration every loaded SAE carries, whatever its on-disk format."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from latentguard.monitors.sae.hooks import Site

__all__ = ["Normalization", "SAEConfig"]

Normalization = Literal["none", "expected_average_only_in", "constant_norm_rescale", "layer_norm"]


class SAEConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    architecture: str
    """Registered architecture key: standard, topk, jumprelu, gated."""
    d_in: int = Field(gt=0)
    """Width of the residual stream rows the SAE reads."""
    d_sae: int = Field(gt=0)
    """Number of features."""
    hook_name: str
    """Hook name as written by the source format (e.g. ``blocks.12.hook_resid_post``)."""
    layer: int
    """Decoder layer index: the SAE reads the residual stream after this layer (see hooks.py)."""
    site: Site = "resid_post"
    """Which stream of that layer the SAE reads."""
    k: int | None = Field(default=None, gt=0)
    """Number of active features (topk architecture only)."""
    apply_b_dec_to_input: bool = True
    """Subtract ``b_dec`` from the input before encoding."""
    normalize_activations: Normalization = "none"
    """Run-time input normalisation (SAELens semantics). ``expected_average_only_in`` is the
    identity at inference: its scaling factor must already be folded into the weights."""
    model_name: str = ""
    """Model the SAE was trained on, when the source says."""
    source_format: str = ""
    """Format the SAE was loaded from (saelens, sparsify, gemma_scope, llama_scope)."""
