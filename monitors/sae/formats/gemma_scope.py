"""Gemma Scope format: one ``params.npz`` per SAE (JumpReLU, per-feature threshold).

Arrays: ``W_enc [d_model, d_sae]``, ``W_dec [d_sae, d_model]``, ``b_enc [d_sae]``,
``b_dec [d_model]``, ``threshold [d_sae]`` (some copies spell ``w_enc`` / ``w_dec``).
Encoding is ``relu(pre) * (pre > threshold)`` with ``pre = x @ W_enc + b_enc`` (no ``b_dec``
subtraction). There is no config: the widths come from the shapes, the layer from a
``layer_N`` folder on the path (``layer_20/width_16k/average_l0_71/params.npz``) and the site
from the release name (``-res``, ``-mlp``, ``-att``), unless ``hook_name`` is given.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from latentguard.monitors.errors import SAEFormatError
from latentguard.monitors.sae.config import SAEConfig
from latentguard.monitors.sae.formats._io import hook_site, layer_from_path, need, read_npz
from latentguard.monitors.sae.hooks import Site

__all__ = ["NAME", "detect", "read"]

NAME = "gemma_scope"
PARAMS_FILE = "params.npz"
_ARRAYS = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")


def detect(path: Path) -> bool:
    return (path.is_dir() and (path / PARAMS_FILE).is_file()) or (
        path.is_file() and path.suffix == ".npz"
    )


def read(path: Path, hook_name: str | None = None) -> tuple[SAEConfig, dict[str, Tensor]]:
    npz_path = path / PARAMS_FILE if path.is_dir() else path
    arrays = read_npz(npz_path)
    arrays = {("W_" + k[2:] if k.startswith("w_") else k): v for k, v in arrays.items()}
    for key in _ARRAYS:
        need(arrays, key, npz_path)
    extra = sorted(set(arrays) - set(_ARRAYS))
    if extra:  # there is no config: an unknown array is the only sign of another architecture
        raise SAEFormatError(npz_path, "array not implemented by this loader", key=extra[0])
    if arrays["W_enc"].ndim != 2:
        raise SAEFormatError(npz_path, f"expected 2 dims, got {arrays['W_enc'].ndim}", key="W_enc")
    d_in, d_sae = arrays["W_enc"].shape
    if hook_name:
        site = hook_site(hook_name, npz_path)
        hook = hook_name
    else:
        layer = layer_from_path(npz_path.resolve())
        if layer is None:
            raise SAEFormatError(
                npz_path, "no layer_N folder on the path; pass hook_name= to load_sae"
            )
        kind = _site_from_path(str(npz_path.resolve()))
        hook = {
            "resid_post": f"blocks.{layer}.hook_resid_post",
            "mlp_out": f"blocks.{layer}.hook_mlp_out",
            "attn_out": f"blocks.{layer}.attn.hook_z",
        }[kind]
        site = hook_site(hook, npz_path)
    cfg = SAEConfig(
        architecture="jumprelu",
        d_in=int(d_in),
        d_sae=int(d_sae),
        hook_name=hook,
        layer=site.layer,
        site=site.site,
        apply_b_dec_to_input=False,
        source_format=NAME,
    )
    tensors = {k: arrays[k] for k in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")}
    return cfg, tensors


def _site_from_path(text: str) -> Site:
    lowered = text.lower()
    if "-mlp" in lowered or "_mlp" in lowered:
        return "mlp_out"
    if "-att" in lowered or "_att" in lowered:
        return "attn_out"
    return "resid_post"
