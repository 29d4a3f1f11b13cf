"""Residual rows of texts, cached on disk for ``latentguard eval`` and ``calibrate``.

The model forward is nearly all of an evaluation's time, and the rows depend only on the model,
the layer, the text and the token cut: so one file per text under
``<root>/<model key>-l<layer>-t<max_tokens>/<sha256 of the text>.safetensors``. The model key
hashes the folder's config and weight files (names, sizes, mtimes), so a refetched model is not
read from a stale cache. Rows are stored in fp32, as computed: a cached run gives the same
numbers as a fresh one.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import Tensor

from latentguard import paths
from latentguard.lab.activations import TextEncoder

__all__ = ["default_cache_dir", "encode_cached", "model_key"]


def default_cache_dir() -> Path:
    return paths.cache_dir() / "activations"


def model_key(model_dir: str | Path) -> str:
    path = Path(model_dir).resolve()
    h = hashlib.sha256(str(path).encode())
    for f in sorted(path.iterdir()):
        if f.is_file() and (f.suffix in (".safetensors", ".bin", ".json", ".model")):
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


def encode_cached(encoder: TextEncoder, model_dir: str | Path, texts: Sequence[str],
                  cache: Path | None, on_texts: Callable[[int], None] | None = None
                  ) -> list[Tensor]:
    """Each text's rows ``[T, d_model]``, from the cache where present (``cache=None``: none)."""
    folder = None
    if cache is not None:
        folder = cache / f"{model_key(model_dir)}-l{encoder.layer}-t{encoder.max_tokens}"
        folder.mkdir(parents=True, exist_ok=True)
    out: list[Tensor | None] = [None] * len(texts)
    missing = []
    for i, text in enumerate(texts):
        file = folder / f"{hashlib.sha256(text.encode()).hexdigest()}.safetensors" \
            if folder is not None else None
        if file is not None and file.is_file():
            out[i] = load_file(str(file))["rows"]
        else:
            missing.append(i)
    if on_texts is not None and len(texts) - len(missing):
        on_texts(len(texts) - len(missing))
    for enc in encoder.encode([texts[i] for i in missing], on_texts):
        i = missing[enc.index]
        rows = enc.rows.contiguous().clone()
        out[i] = rows
        if folder is not None:
            name = hashlib.sha256(texts[i].encode()).hexdigest()
            tmp = folder / f".{name}.{os.getpid()}.tmp"
            save_file({"rows": rows}, str(tmp))
            tmp.replace(folder / f"{name}.safetensors")
    return [r for r in out if r is not None]
