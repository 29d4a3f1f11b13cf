"""``load_sae``: detect the on-disk format, convert, build the architecture's SAE class."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from latentguard.monitors.errors import SAEFormatError
from latentguard.monitors.sae.base import SAE
from latentguard.monitors.sae.formats import detect_format, get_format
from latentguard.monitors.sae.identity import HASH_CHARS, SAEIdentity, sae_name, weights_sha256
from latentguard.monitors.sae.registry import architecture_class

__all__ = ["load_sae"]

logger = logging.getLogger(__name__)


def load_sae(
    path: str | Path,
    *,
    format: str | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    hook_name: str | None = None,
) -> SAE:
    """Load an SAE from a folder (or a Gemma Scope ``params.npz``).

    Args:
        path: the SAE folder (or npz file).
        format: one of ``saelens``, ``sparsify``, ``gemma_scope``, ``llama_scope``; detected from
            the files present when None.
        dtype: compute dtype. fp32 by default: bf16 matmuls are ~200x slower on CPUs without
            AVX512-BF16.
        device: where the tensors live.
        hook_name: overrides the hook name from the files (needed when it cannot be inferred).

    Raises:
        SAEFormatError: unknown format, missing file or key, or a shape mismatch; the message
            names the file and the key. Also raised for any config field, or tensor, that
            the loader does not implement (never silently ignored).
    """
    p = Path(path)
    if not p.exists():
        raise SAEFormatError(p, "path does not exist")
    fmt = get_format(format) if format else detect_format(p)
    cfg, tensors = fmt.read(p, hook_name)
    cls = architecture_class(cfg.architecture, str(p))
    extra = sorted(set(tensors) - set(cls.tensor_shapes))
    if extra:  # a tensor the architecture does not use may change what the SAE computes
        raise SAEFormatError(
            p, f"tensor not used by a {cfg.architecture} SAE; refusing to ignore it", key=extra[0]
        )
    # Hashed as read, before the dtype changes: the identity is the file's, whatever is asked.
    identity = SAEIdentity(name=sae_name(cfg.model_name, cfg.hook_name, p)[:128],
                           hook=cfg.hook_name[:128],
                           sha256=weights_sha256(tensors)[:HASH_CHARS])
    tensors = {k: v.to(dtype=dtype, device=device) for k, v in tensors.items()}
    sae = cls(cfg, tensors, source=str(p), identity=identity)
    logger.info("loaded %s SAE from %s (%s): %r, %s", cfg.architecture, p, fmt.name, sae,
                identity)
    return sae
