"""Llama Scope (OpenMOSS lm-saes) format: ``hyperparams.json`` + ``checkpoints/final.safetensors``.

``hyperparams.json``: ``d_model``, ``d_sae``, ``hook_point_in``, ``hook_point_out``, ``act_fn``
(``jumprelu`` with scalar ``jump_relu_threshold``, ``topk`` with ``top_k``, or ``relu``),
``norm_activation`` (``dataset-wise`` with ``dataset_average_activation_norm: {in, out}``),
``apply_decoder_bias_to_pre_encoder``, ``sparsity_include_decoder_norm``.
Tensors: ``encoder.weight [d_sae, d_model]``, ``encoder.bias``, ``decoder.weight
[d_model, d_sae]``, ``decoder.bias`` (nn.Linear layout, as released), or the newer lm-saes
names ``W_E [d_model, d_sae]``, ``b_E``, ``W_D [d_sae, d_model]``, ``b_D``; optional
``log_jumprelu_threshold [d_sae]``.

Conversion (exact, so features equal lm-saes's feature activations):
* dataset-wise norm: the SAE was trained on ``x * sqrt(d_model) / norm_in`` and predicts
  ``y * sqrt(d_model) / norm_out``, so ``W_enc`` is scaled by the first factor and
  ``W_dec``, ``b_dec`` divided by the second;
* ``sparsity_include_decoder_norm``: lm-saes compares ``pre * ||W_D[i]||`` with the threshold,
  so the per-feature threshold becomes ``threshold / ||W_D[i]||`` (jumprelu); for topk the
  decoder norms are folded into the encoder (same reconstruction, features scaled by the norm).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor

from latentguard.monitors.errors import SAEFormatError
from latentguard.monitors.sae.config import Normalization, SAEConfig
from latentguard.monitors.sae.formats._io import (
    check_keys,
    hook_site,
    read_json,
    read_safetensors,
    refuse,
    require,
)

__all__ = ["NAME", "detect", "read"]

NAME = "llama_scope"
HPARAMS_FILE = "hyperparams.json"
WEIGHTS_FILE = Path("checkpoints") / "final.safetensors"
_FIELDS = frozenset({
    # implemented
    "d_model", "d_sae", "hook_point_in", "act_fn", "jump_relu_threshold", "top_k",
    "norm_activation", "dataset_average_activation_norm", "apply_decoder_bias_to_pre_encoder",
    "sparsity_include_decoder_norm",
    "use_decoder_bias",  # implemented: must be true
    "use_glu_encoder",  # implemented: must be false
    # metadata: the output hook names what decode predicts; training-only settings
    "hook_point_out", "expansion_factor", "decoder_exactly_fixed_norm", "init_decoder_norm",
    "init_encoder_norm", "init_encoder_with_decoder_transpose", "lp", "l1_coefficient",
    "l1_coefficient_warmup_steps", "k_warmup_steps", "use_batch_norm_mse", "use_ghost_grads",
    "tp_size", "ddp_size",
})
_TENSORS = frozenset({
    "encoder.weight", "encoder.bias", "decoder.weight", "decoder.bias",
    "W_E", "b_E", "W_D", "b_D", "log_jumprelu_threshold",
})
"""The lm-saes ``hyperparams.json`` fields of the Llama Scope release; others are refused."""


def detect(path: Path) -> bool:
    return path.is_dir() and (path / HPARAMS_FILE).is_file() and (path / WEIGHTS_FILE).is_file()


def _weights(st: dict[str, Tensor], path: Path) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    if "encoder.weight" in st:
        names = ("encoder.weight", "encoder.bias", "decoder.weight", "decoder.bias")
        transpose = True
    elif "W_E" in st:
        names = ("W_E", "b_E", "W_D", "b_D")
        transpose = False
    else:
        raise SAEFormatError(path, "missing key (or W_E)", key="encoder.weight")
    for name in names:
        if name not in st:
            raise SAEFormatError(path, "missing key", key=name)
    w_e, b_e, w_d, b_d = (st[n].float() for n in names)
    if transpose:
        w_e, w_d = w_e.T, w_d.T
    return w_e, b_e, w_d, b_d


def read(path: Path, hook_name: str | None = None) -> tuple[SAEConfig, dict[str, Tensor]]:
    hp_path = path / HPARAMS_FILE
    hp = read_json(hp_path)
    check_keys(hp, _FIELDS, hp_path)
    if hp.get("use_decoder_bias", True) is not True:
        refuse(hp_path, "use_decoder_bias", hp["use_decoder_bias"], "only true")
    if hp.get("use_glu_encoder", False) is not False:
        refuse(hp_path, "use_glu_encoder", hp["use_glu_encoder"], "only false")
    d_model = require(hp, "d_model", int, hp_path)
    d_sae = require(hp, "d_sae", int, hp_path)
    hook_in = require(hp, "hook_point_in", str, hp_path)
    hook = hook_name or hook_in
    site = hook_site(hook, hp_path, key="hook_point_in")
    weights_path = path / WEIGHTS_FILE
    st = read_safetensors(weights_path)
    extra = sorted(set(st) - _TENSORS)
    if extra:
        raise SAEFormatError(weights_path, "tensor not implemented by this loader", key=extra[0])
    w_enc, b_enc, w_dec, b_dec = _weights(st, weights_path)
    if w_enc.shape != (d_model, d_sae) or w_dec.shape != (d_sae, d_model):
        raise SAEFormatError(
            weights_path,
            f"encoder/decoder shapes {tuple(w_enc.shape)}/{tuple(w_dec.shape)} do not match "
            f"d_model={d_model}, d_sae={d_sae}",
        )
    apply_b_dec = bool(hp.get("apply_decoder_bias_to_pre_encoder", False))
    # lm-saes scales by the norms of the decoder as stored (before the dataset-norm fold)
    dec_norm = w_dec.norm(dim=1) if hp.get("sparsity_include_decoder_norm", False) else None

    norm_activation = hp.get("norm_activation", "inference")
    normalize: Normalization = "none"
    if norm_activation == "dataset-wise":
        norms = hp.get("dataset_average_activation_norm")
        if not isinstance(norms, dict) or not {"in", "out"} <= norms.keys():
            key = "dataset_average_activation_norm"
            raise SAEFormatError(hp_path, "expected an object with in and out", key=key)
        f_in = math.sqrt(d_model) / float(norms["in"])
        f_out = math.sqrt(d_model) / float(norms["out"])
        if apply_b_dec and not math.isclose(f_in, f_out):
            raise SAEFormatError(
                hp_path, "decoder bias on the input needs equal in/out norms", key="norm_activation"
            )
        w_enc = w_enc * f_in
        w_dec, b_dec = w_dec / f_out, b_dec / f_out
    elif norm_activation == "token-wise":
        normalize = "constant_norm_rescale"  # x * sqrt(d_model) / ||x|| per token
    elif norm_activation != "inference":
        problem = f"unsupported value {norm_activation!r}"
        raise SAEFormatError(hp_path, problem, key="norm_activation")

    act = hp.get("act_fn", "relu")
    tensors = {"W_enc": w_enc, "b_enc": b_enc, "W_dec": w_dec, "b_dec": b_dec}
    k = None
    if act == "jumprelu":
        if "log_jumprelu_threshold" in st:
            threshold = st["log_jumprelu_threshold"].float().exp()
        else:
            t = require(hp, "jump_relu_threshold", float, hp_path)
            threshold = torch.full((d_sae,), t)
        if dec_norm is not None:
            threshold = threshold / dec_norm.clamp_min(1e-12)
        tensors["threshold"] = threshold
        architecture = "jumprelu"
    elif act in ("topk", "relu"):
        if dec_norm is not None:
            tensors["W_enc"] = w_enc * dec_norm
            tensors["b_enc"] = b_enc * dec_norm
            tensors["W_dec"] = w_dec / dec_norm[:, None].clamp_min(1e-12)
        architecture = "standard" if act == "relu" else "topk"
        k = require(hp, "top_k", int, hp_path) if act == "topk" else None
    else:
        raise SAEFormatError(hp_path, f"unsupported activation {act!r}", key="act_fn")
    cfg = SAEConfig(
        architecture=architecture,
        d_in=d_model,
        d_sae=d_sae,
        hook_name=hook,
        layer=site.layer,
        site=site.site,
        k=k,
        apply_b_dec_to_input=apply_b_dec,
        normalize_activations=normalize,
        source_format=NAME,
    )
    return cfg, tensors
