"""EleutherAI sparsify format: a hookpoint folder with ``cfg.json`` + ``sae.safetensors``.

``cfg.json`` holds ``d_in``, ``k``, ``num_latents`` (0 = ``d_in * expansion_factor``),
``activation`` (``topk``; ``groupmax`` is not supported), ``transcode``, ``skip_connection``.
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
from latentguard.monitors.sae.formats._io import hook_site, need, read_json, read_safetensors
from latentguard.monitors.sae.formats._io import require as _require

__all__ = ["NAME", "detect", "read"]

logger = logging.getLogger(__name__)

NAME = "sparsify"
CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae.safetensors"


def detect(path: Path) -> bool:
    return path.is_dir() and (path / CFG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()


def read(path: Path, hook_name: str | None = None) -> tuple[SAEConfig, dict[str, Tensor]]:
    cfg_path = path / CFG_FILE
    raw = read_json(cfg_path)
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
    if "W_skip" in st:
        logger.warning("%s: W_skip (skip connection) is ignored by decode", weights_path)
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
