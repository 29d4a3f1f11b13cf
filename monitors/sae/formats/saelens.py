"""SAELens format: ``cfg.json`` + ``sae_weights.safetensors`` (v6, and older configs).

Tensors (SAELens names): ``W_enc [d_in, d_sae]``, ``b_enc``, ``W_dec [d_sae, d_in]``, ``b_dec``,
plus ``threshold`` (jumprelu) or ``b_gate``, ``b_mag``, ``r_mag`` (gated, no ``b_enc``).
The hook name is ``metadata.hook_name`` (v6; ``meta`` in some 6.x releases), or top-level
``hook_name`` / ``hook_point`` in configs written before 6.0.

The reader never guesses: every field (``_saelens_fields``) is implemented or refused with its
name. ``rescale_acts_by_decoder_norm`` is folded into the weights exactly as SAELens computes
it; ``reshape_activations: hook_z``, ``covariance_whitening``, ``hook_head_index`` and
unknown keys are refused. ``tests/monitors/sae/peers`` holds SAEs saved by sae-lens itself.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, cast

import torch
from safetensors.torch import save_file
from torch import Tensor

from latentguard.monitors.errors import SAEFormatError
from latentguard.monitors.sae.base import SAE
from latentguard.monitors.sae.config import Normalization, SAEConfig
from latentguard.monitors.sae.formats._io import (
    check_keys,
    hook_site,
    need,
    read_json,
    read_safetensors,
    refuse,
    require,
)
from latentguard.monitors.sae.formats._saelens_fields import (
    ARCH_FIELDS,
    LEGACY_FIELDS,
    METADATA_FIELDS,
    V6_FIELDS,
)
from latentguard.monitors.sae.registry import architecture_class

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
    legacy = "metadata" not in raw and "meta" not in raw
    architecture, k = _architecture(raw, cfg_path, legacy)
    architecture_class(architecture, str(cfg_path))  # unknown architectures first, by name
    if legacy:
        check_keys(raw, LEGACY_FIELDS, cfg_path)
        meta, prefix = raw, ""
    else:
        check_keys(raw, V6_FIELDS | ARCH_FIELDS[architecture], cfg_path)
        meta_key = "metadata" if "metadata" in raw else "meta"
        meta = raw[meta_key]
        if not isinstance(meta, dict):
            raise SAEFormatError(cfg_path, "expected an object", key=meta_key)
        prefix = meta_key + "."
        check_keys(meta, METADATA_FIELDS, cfg_path, prefix=prefix)
    for key in ("hook_head_index", "hook_point_head_index"):
        if meta.get(key) is not None:
            refuse(cfg_path, prefix + key, meta[key], "SAEs of one attention head")
    if architecture != "topk":
        for key in sorted(ARCH_FIELDS["topk"] & raw.keys()):
            refuse(cfg_path, key, raw[key], f"a field of topk SAEs, not {architecture}")
    hook = hook_name or meta.get("hook_name") or (raw.get("hook_point") if legacy else None)
    if not isinstance(hook, str) or not hook:
        raise SAEFormatError(cfg_path, "missing key", key="metadata.hook_name")
    site = hook_site(hook, cfg_path)
    tensors = read_safetensors(path / WEIGHTS_FILE)
    _check_scaling_factor(raw, tensors, path / WEIGHTS_FILE)
    if _flag(raw, "rescale_acts_by_decoder_norm", cfg_path):
        tensors = _fold_decoder_norm(tensors, path / WEIGHTS_FILE)
    cfg = SAEConfig(
        architecture=architecture,
        d_in=require(raw, "d_in", int, cfg_path),
        d_sae=require(raw, "d_sae", int, cfg_path),
        hook_name=hook,
        layer=site.layer,
        site=site.site,
        k=k,
        apply_b_dec_to_input=_flag(raw, "apply_b_dec_to_input", cfg_path, default=True),
        normalize_activations=_normalization(raw, cfg_path, legacy),
        model_name=str(meta.get("model_name") or ""),
        source_format=NAME,
    )
    _check_simple_fields(raw, cfg_path)
    return cfg, tensors


def _architecture(raw: dict[str, Any], path: Path, legacy: bool) -> tuple[str, int | None]:
    """The architecture key and ``k``; pre-6.0 configs say topk with ``activation_fn``."""
    architecture = raw.get("architecture", "standard")
    if not isinstance(architecture, str):
        raise SAEFormatError(path, f"expected str, got {architecture!r}", key="architecture")
    k = raw.get("k")
    if legacy:
        act_key = "activation_fn" if "activation_fn" in raw else "activation_fn_str"
        act = raw.get(act_key, "relu")
        kwargs = raw.get("activation_fn_kwargs") or {}
        if not isinstance(kwargs, dict):
            refuse(path, "activation_fn_kwargs", kwargs, "expected an object")
        if architecture == "topk" or (act == "topk" and architecture == "standard"):
            architecture, k = "topk", kwargs.get("k", k)
            extra = sorted(set(kwargs) - {"k"})
            if act not in ("topk", "relu"):
                refuse(path, act_key, act, "a topk SAE takes topk (or the default relu)")
        elif act == "relu":
            extra = sorted(kwargs)
        else:
            refuse(path, act_key, act, f"only relu, or topk with {architecture!r} SAEs")
        if extra:
            refuse(path, f"activation_fn_kwargs.{extra[0]}", kwargs[extra[0]], "unknown kwarg")
    if architecture == "topk" and (not isinstance(k, int) or isinstance(k, bool)):
        raise SAEFormatError(path, f"expected int, got {k!r}", key="k")
    return architecture, (k if architecture == "topk" else None)


def _normalization(raw: dict[str, Any], path: Path, legacy: bool) -> Normalization:
    norm = raw.get("normalize_activations", "none")
    if legacy and (isinstance(norm, bool) or norm is None):  # pre-6.0 booleans
        norm = "expected_average_only_in" if norm else "none"
    if norm == "covariance_whitening":
        refuse(path, "normalize_activations", norm, "fold the whitening into the weights first")
    if norm not in _NORMS:
        raise SAEFormatError(path, f"unknown value {norm!r}", key="normalize_activations")
    if norm == "expected_average_only_in":
        logger.warning(
            "%s: normalize_activations=expected_average_only_in is the identity at inference "
            "(as in SAELens); fold its scaling factor into the weights if the SAE was trained "
            "with one", path
        )
    return cast(Normalization, norm)


def _flag(raw: dict[str, Any], key: str, path: Path, *, default: bool = False) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise SAEFormatError(path, f"expected bool, got {value!r}", key=key)
    return value


def _check_simple_fields(raw: dict[str, Any], path: Path) -> None:
    """Fields with one implemented value, or plain strings the loader does not use."""
    reshape = raw.get("reshape_activations", "none")
    if reshape != "none":
        refuse(path, "reshape_activations", reshape, "only 'none' (hook_z SAEs read per-head "
               "attention outputs, which the monitor does not capture)")
    for key in ("dtype", "device"):
        if key in raw and not isinstance(raw[key], str):
            raise SAEFormatError(path, f"expected str, got {raw[key]!r}", key=key)


def _fold_decoder_norm(tensors: dict[str, Tensor], path: Path) -> dict[str, Tensor]:
    """``rescale_acts_by_decoder_norm`` as SAELens computes it, folded into the weights.

    SAELens multiplies the pre-activation by ``||W_dec[i]||`` before top-k and divides the
    activations by it before decoding: the same as encoding with ``W_enc * n``, ``b_enc * n``
    and decoding with ``W_dec / n``, so the TopK class needs no option of its own.
    """
    for key in ("W_enc", "b_enc", "W_dec"):
        need(tensors, key, path)
    norms = tensors["W_dec"].float().norm(dim=-1)
    return {
        **tensors,
        "W_enc": tensors["W_enc"].float() * norms,
        "b_enc": tensors["b_enc"].float() * norms,
        "W_dec": tensors["W_dec"].float() / norms[:, None],
    }


def _check_scaling_factor(raw: dict[str, Any], tensors: dict[str, Tensor], path: Path) -> None:
    """Pre-6.0 finetuning scaling factors: accepted only when they are the identity."""
    flag = raw.get("finetuning_scaling_factor", False)
    if flag not in (False, None):
        refuse(path.with_name(CFG_FILE), "finetuning_scaling_factor", flag, "only false")
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
