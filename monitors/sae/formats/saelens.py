"""SAELens format: ``cfg.json`` + ``sae_weights.safetensors`` (v6, and older configs).

Tensors (SAELens names): ``W_enc [d_in, d_sae]``, ``b_enc``, ``W_dec [d_sae, d_in]``, ``b_dec``,
plus ``threshold`` (jumprelu) or ``b_gate``, ``b_mag``, ``r_mag`` (gated, no ``b_enc``).
The hook name is ``metadata.hook_name`` (v6; ``meta`` in some 6.x releases), or top-level
``hook_name`` / ``hook_point`` in configs written before 6.0.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor

from latentguard.monitors.errors import SAEFormatError
from latentguard.monitors.sae.base import SAE
from latentguard.monitors.sae.config import SAEConfig
from latentguard.monitors.sae.formats._io import hook_site, read_json, read_safetensors, require

__all__ = ["CFG_FILE", "NAME", "WEIGHTS_FILE", "detect", "read", "save_saelens"]

logger = logging.getLogger(__name__)

NAME = "saelens"
CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
_NORMS = ("none", "expected_average_only_in", "constant_norm_rescale", "layer_norm")


def detect(path: Path) -> bool:
    return path.is_dir() and (path / CFG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()


def read(path: Path, hook_name: str | None = None) -> tuple[SAEConfig, dict[str, Tensor]]:
    cfg_path = path / CFG_FILE
    raw = read_json(cfg_path)
    meta = raw.get("metadata") or raw.get("meta") or {}
    if not isinstance(meta, dict):
        raise SAEFormatError(cfg_path, "expected an object", key="metadata")
    hook = hook_name or meta.get("hook_name") or raw.get("hook_name") or raw.get("hook_point")
    if not isinstance(hook, str) or not hook:
        raise SAEFormatError(cfg_path, "missing key", key="metadata.hook_name")
    architecture = raw.get("architecture", "standard")
    k = raw.get("k")
    activation = raw.get("activation_fn", raw.get("activation_fn_str"))
    if architecture == "standard" and activation == "topk":
        architecture = "topk"  # pre-6.0 configs: topk as an activation function
    if architecture == "topk" and k is None:
        kwargs = raw.get("activation_fn_kwargs") or {}
        k = kwargs.get("k") if isinstance(kwargs, dict) else None
    norm = raw.get("normalize_activations", "none")
    if isinstance(norm, bool) or norm is None:  # pre-6.0 booleans
        norm = "expected_average_only_in" if norm else "none"
    if norm not in _NORMS:
        raise SAEFormatError(cfg_path, f"unknown value {norm!r}", key="normalize_activations")
    if norm == "expected_average_only_in":
        logger.warning(
            "%s: normalize_activations=expected_average_only_in is the identity at inference; "
            "fold its scaling factor into the weights if the SAE was trained with one", cfg_path
        )
    site = hook_site(hook, cfg_path)
    tensors = read_safetensors(path / WEIGHTS_FILE)
    _check_scaling_factor(tensors, path / WEIGHTS_FILE)
    cfg = SAEConfig(
        architecture=architecture,
        d_in=require(raw, "d_in", int, cfg_path),
        d_sae=require(raw, "d_sae", int, cfg_path),
        hook_name=hook,
        layer=site.layer,
        site=site.site,
        k=k if architecture == "topk" else None,
        apply_b_dec_to_input=bool(raw.get("apply_b_dec_to_input", True)),
        normalize_activations=norm,
        model_name=str(meta.get("model_name") or raw.get("model_name") or ""),
        source_format=NAME,
    )
    return cfg, tensors


def _check_scaling_factor(tensors: dict[str, Tensor], path: Path) -> None:
    for key in ("scaling_factor", "finetuning_scaling_factor"):
        if key in tensors:
            if not torch.allclose(tensors[key], torch.ones_like(tensors[key])):
                raise SAEFormatError(path, "a finetuning scaling factor is not supported", key=key)
            del tensors[key]


def save_saelens(sae: SAE, path: str | Path, *, model_name: str | None = None) -> Path:
    """Write ``sae`` as a SAELens v6 folder (``cfg.json`` + ``sae_weights.safetensors``)."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    cfg = sae.cfg
    raw: dict[str, Any] = {
        "architecture": cfg.architecture,
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "dtype": str(sae.dtype).removeprefix("torch."),
        "device": "cpu",
        "apply_b_dec_to_input": cfg.apply_b_dec_to_input,
        "normalize_activations": cfg.normalize_activations,
        "reshape_activations": "none",
        "metadata": {
            "model_name": model_name if model_name is not None else cfg.model_name,
            "hook_name": cfg.hook_name,
            "hook_layer": cfg.layer,
            "sae_lens_version": "6.0.0",
            "written_by": "latentguard",
        },
    }
    if cfg.k is not None:
        raw["k"] = cfg.k
    tensors = {k: v.detach().contiguous().cpu() for k, v in sae.state_dict().items()}
    save_file(tensors, str(out / WEIGHTS_FILE))
    (out / CFG_FILE).write_text(json.dumps(raw, indent=2), encoding="utf-8")
    return out
