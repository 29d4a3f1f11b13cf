"""Directions to steer along at an SAE's layer: an SAE feature, a vector from a safetensors file
(a residual probe's direction), or the difference of the mean residuals of two sets of texts.

Every direction is steered through :func:`latentguard.monitors.steering.apply_steer`, the
function the plugin applies, so ``add`` / ``clamp`` / ``ablate`` mean what they mean in a rule.
A feature is steered in the user's SAE. A vector ``v`` is steered in a two-feature ReLU SAE whose
encoder columns and decoder rows are ``u`` and ``-u`` (``u = v / |v|``, no biases): its features
are the positive and negative parts of the projection ``p = <h, u>``, so ``add s`` moves the row
by ``s * u``, ``clamp c`` sets ``p`` to ``c`` (the rest of the row kept) and ``ablate`` removes
``p * u`` (directional ablation).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from latentguard.lab.activations import TextEncoder
from latentguard.lab.errors import LabError
from latentguard.monitors.errors import MonitorError
from latentguard.monitors.rules.schema import Steer, SteerFeature
from latentguard.monitors.sae import SAE, SAEConfig, StandardSAE
from latentguard.monitors.sae.formats._io import read_safetensors

__all__ = [
    "Direction", "EffectError", "Mode", "feature_direction", "load_direction",
    "mean_difference", "vector_direction",
]

Mode = Literal["add", "clamp", "ablate"]


class EffectError(LabError):
    """A direction, prompt or target that cannot be used; the message names the flag."""


@dataclass(frozen=True)
class Direction:
    """What to steer: ``feature`` of ``sae`` (the user's SAE, or a vector's two-feature SAE)."""

    kind: Literal["feature", "vector", "mean-diff"]
    source: str
    """Where it came from, for people: ``feature 12``, ``probes/x.safetensors:direction``."""
    sae: SAE
    feature: int | None
    """The user's SAE feature (None for a vector)."""
    unit: Tensor
    """[d_in] unit vector of the direction (a feature's decoder row, normalised)."""
    norm: float
    """Norm of the decoder row, or of the vector as given (before normalising)."""

    def steer(self, mode: Mode, strength: float | None, preserve_norm: bool = False) -> Steer:
        """The Steer a rule would carry for this direction (``strength`` unused by ablate)."""
        value = 0.0 if strength is None else float(strength)
        if self.feature is not None:
            feats = [SteerFeature(feature=self.feature, value=value)]
        elif mode == "ablate":
            feats = [SteerFeature(feature=0), SteerFeature(feature=1)]
        elif mode == "add":
            feats = [SteerFeature(feature=0, value=value)]
        else:  # clamp the projection: the part on the sign of c is set, the other zeroed
            feats = [SteerFeature(feature=0, value=max(value, 0.0)),
                     SteerFeature(feature=1, value=max(-value, 0.0))]
        return Steer(mode=mode, features=feats, preserve_norm=preserve_norm)

    @torch.inference_mode()
    def values(self, rows: Tensor) -> Tensor:
        """[n] the feature's activation, or the projection on ``unit``, of rows [n, d_in]."""
        if self.feature is not None:
            return self.sae.encode(rows)[:, self.feature].float()
        return rows.to(self.unit) @ self.unit

    def to(self, device: torch.device | str) -> Direction:
        return Direction(self.kind, self.source, self.sae.to(device=device), self.feature,
                         self.unit.to(device), self.norm)


def feature_direction(sae: SAE, feature: int) -> Direction:
    if not 0 <= feature < sae.d_sae:
        raise EffectError(f"--feature: {feature} is out of range 0..{sae.d_sae - 1}")
    row = sae.W_dec[feature].detach().float().cpu()
    norm = float(row.norm())
    return Direction("feature", f"feature {feature}", sae, feature,
                     row / max(norm, 1e-12), norm)


def vector_direction(vector: Tensor, sae: SAE, source: str,
                     kind: Literal["vector", "mean-diff"] = "vector",
                     flag: str = "--direction") -> Direction:
    """A raw vector [d_in] (checked against ``sae``'s width) as a steerable direction."""
    v = vector.detach().float().cpu().reshape(-1) if vector.ndim == 2 and 1 in vector.shape \
        else vector.detach().float().cpu()
    if v.ndim != 1 or v.shape[0] != sae.d_in:
        raise EffectError(f"{flag}: {source} has shape {list(vector.shape)}; the SAE reads "
                          f"residual rows of width {sae.d_in}")
    if not bool(torch.isfinite(v).all()):
        raise EffectError(f"{flag}: {source} has non-finite values")
    norm = float(v.norm())
    if norm < 1e-12:
        raise EffectError(f"{flag}: {source} is the zero vector")
    u = v / norm
    cfg = SAEConfig(architecture="standard", d_in=sae.d_in, d_sae=2, hook_name=sae.hook_name,
                    layer=sae.layer, apply_b_dec_to_input=False)
    pair = torch.stack([u, -u])
    two = StandardSAE(cfg, {"W_enc": pair.T.contiguous(), "b_enc": torch.zeros(2),
                            "W_dec": pair.contiguous(), "b_dec": torch.zeros(sae.d_in)},
                      source=source)
    return Direction(kind, source, two.to(dtype=sae.dtype, device=sae.device), None, u, norm)


def load_direction(spec: str, sae: SAE) -> Direction:
    """``FILE.safetensors[:NAME]``: tensor NAME, else ``direction``, else the file's only one.
    A probe that reads SAE features (its ``.json`` says ``"input": "features"``) is refused."""
    head, sep, name = spec.rpartition(":")
    path = Path(head) if sep and head.endswith(".safetensors") else Path(spec)
    name = name if sep and head.endswith(".safetensors") else ""
    if path.suffix != ".safetensors":
        raise EffectError(f"--direction: {spec}: expected FILE.safetensors[:TENSOR]")
    if not path.is_file():
        raise EffectError(f"--direction: {path}: no such file")
    try:
        tensors = read_safetensors(path)
    except MonitorError as exc:
        raise EffectError(f"--direction: {exc}") from None
    meta = path.with_suffix(".json")
    if meta.is_file():
        try:
            reads = json.loads(meta.read_text(encoding="utf-8")).get("input", "residual")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            reads = "residual"
        if reads == "features":
            raise EffectError(f"--direction: {path} is a probe over SAE features ({meta.name} "
                              "says input: features), not a residual direction")
    if not name:
        name = "direction" if "direction" in tensors else next(iter(tensors)) \
            if len(tensors) == 1 else ""
        if not name:
            raise EffectError(f"--direction: {path} holds {len(tensors)} tensors "
                              f"({', '.join(sorted(tensors))}); name one: {path}:NAME")
    if name not in tensors:
        raise EffectError(f"--direction: {path} has no tensor {name!r} "
                          f"(it has {', '.join(sorted(tensors)) or 'none'})")
    return vector_direction(tensors[name], sae, f"{path}:{name}")


@torch.inference_mode()
def mean_residual(encoder: TextEncoder, texts: Sequence[str],
                  on_batch: Callable[[int], None] | None = None) -> Tensor:
    """[d_in] the mean over texts of each text's mean residual row after the encoder's layer
    (BOS left out; every text counts once, whatever its length)."""
    total: Tensor | None = None
    for enc in encoder.encode(texts, on_batch):
        mean = enc.rows.double().mean(0)
        total = mean if total is None else total + mean
    if total is None:
        raise EffectError("--mean-diff: no texts")
    return (total / len(texts)).float()


def mean_difference(encoder: TextEncoder, pos: Sequence[str], neg: Sequence[str],
                    on_batch: Callable[[int], None] | None = None) -> Tensor:
    """[d_in] mean residual of ``pos`` minus that of ``neg`` (see :func:`mean_residual`)."""
    if not pos or not neg:
        raise EffectError("--mean-diff: both POS and NEG need texts")
    return mean_residual(encoder, pos, on_batch) - mean_residual(encoder, neg, on_batch)
