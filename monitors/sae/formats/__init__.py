"""On-disk SAE formats, each a converter returning ``(SAEConfig, tensors)`` in SAELens layout."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from torch import Tensor

from latentguard.monitors.errors import SAEFormatError
from latentguard.monitors.sae.config import SAEConfig
from latentguard.monitors.sae.formats import gemma_scope, llama_scope, saelens, sparsify

__all__ = ["SAEFormat", "detect_format", "format_names", "get_format"]


class SAEFormat(NamedTuple):
    name: str
    detect: Callable[[Path], bool]
    """True when ``path`` looks like this format (files present)."""
    read: Callable[[Path, str | None], tuple[SAEConfig, dict[str, Tensor]]]
    """``read(path, hook_name_override)`` -> (config, tensors in SAELens layout)."""


_FORMATS: dict[str, SAEFormat] = {}


def _register(fmt: SAEFormat) -> None:
    if fmt.name in _FORMATS:
        raise ValueError(f"SAE format {fmt.name!r} is already registered")
    _FORMATS[fmt.name] = fmt


for _mod in (saelens, sparsify, gemma_scope, llama_scope):
    _register(SAEFormat(_mod.NAME, _mod.detect, _mod.read))


def format_names() -> list[str]:
    return list(_FORMATS)


def get_format(name: str) -> SAEFormat:
    try:
        return _FORMATS[name]
    except KeyError:
        raise SAEFormatError(
            "<format>", f"unknown SAE format {name!r}; valid: {', '.join(_FORMATS)}"
        ) from None


def detect_format(path: Path) -> SAEFormat:
    """The first format whose files are present at ``path``."""
    for fmt in _FORMATS.values():
        if fmt.detect(path):
            return fmt
    raise SAEFormatError(
        path,
        "no known SAE format found (expected cfg.json + sae_weights.safetensors (saelens), "
        "cfg.json + sae.safetensors (sparsify), params.npz (gemma_scope) or hyperparams.json + "
        "checkpoints/final.safetensors (llama_scope))",
    )
