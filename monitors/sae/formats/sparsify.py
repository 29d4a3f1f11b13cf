"""EleutherAI sparsify format: a hookpoint folder with ``cfg.json`` + ``sae.safetensors``.

``cfg.json`` holds ``d_in``, ``k``, ``num_latents`` (0 = ``d_in * expansion_factor``),
``activation`` (``topk``; ``groupmax`` is not supported), ``transcode``, ``skip_connection``
(refused when true: decode would need ``W_skip``); any other field is refused by name.
Tensors: ``encoder.weight [num_latents, d_in]``, ``encoder.bias [num_latents]``,
``W_dec [num_latents, d_in]``, ``b_dec [d_in]``, optional ``W_skip [d_in, d_in]``.
Encoding is ``topk(relu((x - b_dec) @ encoder.weight.T + encoder.bias))`` (no ``b_dec``
subtraction for transcoders). The folder name is the hookpoint (e.g. ``layers.12``).
"""

from __future__ import annotations

import logging
from pathlib import Path

from torch import Tensor

from latentguard.monitors.errors import SAEFormatError
from latentguard.monitors.sae.config import SAEConfig
from latentguard.monitors.sae.formats._io import (
    check_keys,
    hook_site,
    need,
    read_json,
    read_safetensors,
    refuse,
)
from latentguard.monitors.sae.formats._io import require as _require

__all__ = ["NAME", "detect", "read"]

logger = logging.getLogger(__name__)

NAME = "sparsify"
CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae.safetensors"
_FIELDS = frozenset({
    "d_in",
    "k",
    "activation",  # implemented: topk (groupmax refused)
    "num_latents",
    "expansion_factor",  # width when num_latents is 0
    "transcode",  # implemented: no b_dec subtraction, decode predicts the output
    "skip_connection",  # implemented: must be false
    "normalize_decoder",  # training only: unit-norm decoder rows during training
    "multi_topk",  # training only: an extra loss term
})
"""Every field of sparsify 1.3.3 ``SparseCoderConfig`` plus ``d_in`` (``save_to_disk``)."""


def detect(path: Path) -> bool:
    return path.is_dir() and (path / CFG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()


def read(path: Path, hook_name: str | None = None) -> tuple[SAEConfig, dict[str, Tensor]]:
    cfg_path = path / CFG_FILE
    raw = read_json(cfg_path)
    check_keys(raw, _FIELDS, cfg_path)
    for key in ("skip_connection", "transcode", "multi_topk", "normalize_decoder"):
        if not isinstance(raw.get(key, False), bool):
            raise SAEFormatError(cfg_path, f"expected bool, got {raw[key]!r}", key=key)
    if raw.get("skip_connection", False):
        refuse(cfg_path, "skip_connection", True, "decode would need W_skip @ x")
    d_in = _require(raw, "d_in", int, cfg_path)
    k = _require(raw, "k", int, cfg_path)
    activation = raw.get("activation", "topk")
    if activation != "topk":
        problem = f"activation {activation!r} is not supported (only topk)"
        raise SAEFormatError(cfg_path, problem, key="activation")
    num_latents = raw.get("num_latents") or d_in * int(raw.get("expansion_factor", 32))
    weights_path = path / WEIGHTS_FILE
    st = read_safetensors(weights_path)
    for key in ("encoder.weight", "encoder.bias", "W_dec", "b_dec"):
        need(st, key, weights_path)
    extra = sorted(set(st) - {"encoder.weight", "encoder.bias", "W_dec", "b_dec"})
    if extra:
        raise SAEFormatError(weights_path, "tensor not implemented by this loader", key=extra[0])
    hook = hook_name or path.name
    site = hook_site(hook, path, key="hookpoint folder name")
    tensors = {
        "W_enc": st["encoder.weight"].T,
        "b_enc": st["encoder.bias"],
        "W_dec": st["W_dec"],
        "b_dec": st["b_dec"],
    }
    cfg = SAEConfig(
        architecture="topk",
        d_in=d_in,
        d_sae=int(num_latents),
        hook_name=hook,
        layer=site.layer,
        site=site.site,
        k=k,
        apply_b_dec_to_input=not bool(raw.get("transcode", False)),
        source_format=NAME,
    )
    return cfg, tensors
