"""Residual-stream activations from HF models: the decoder layers, one layer's rows for token
contexts, and `TextEncoder` (texts -> rows). Shared by training, discovery and the benchmarks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from latentguard.lab.errors import ActivationError

__all__ = ["ActivationError", "Encoded", "TextEncoder", "decoder_layers", "layer_rows"]


class _StopForward(Exception):
    """Raised by the capture hook: nothing after the layer needs computing."""

def decoder_layers(model: nn.Module) -> nn.ModuleList:
    for path in ("model.layers", "model.language_model.layers", "transformer.h",
                 "gpt_neox.layers", "model.decoder.layers"):
        try:
            mod = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(mod, nn.ModuleList):
            return mod
    raise ActivationError(f"model: cannot find the decoder layers of {type(model).__name__}")


@torch.no_grad()
def layer_rows(model: nn.Module, layer: int, contexts: Tensor, model_batch: int) -> Tensor:
    """[n * (ctx_len - 1), d] fp32 residual rows after ``layer`` (position 0 left out)."""
    captured: list[Tensor] = []

    def hook(_mod: nn.Module, _inp: Any, out: Any) -> None:
        captured.append((out[0] if isinstance(out, tuple) else out)[:, 1:].float())
        raise _StopForward

    handle = decoder_layers(model)[layer].register_forward_hook(hook)
    device = next(model.parameters()).device
    try:
        for chunk in contexts.split(model_batch):
            try:
                model(input_ids=chunk.to(device), use_cache=False)
            except _StopForward:
                pass
    finally:
        handle.remove()
    return torch.cat(captured).flatten(0, 1)

@dataclass(frozen=True)
class Encoded:
    """One text through the model: its token ids (BOS left out) and residual rows."""

    index: int
    ids: list[int]
    rows: Tensor
    """[len(ids), d_model] fp32 residual stream after the layer."""


class TextEncoder:
    """An HF model cut after ``layer``, turning texts into residual rows."""

    def __init__(self, model: nn.Module, tokenizer: Any, layer: int, *, max_tokens: int = 256,
                 batch: int = 8) -> None:
        n_layers = len(decoder_layers(model))
        if not 0 <= layer < n_layers:
            raise ActivationError(f"layer: {layer} is out of range (the model has {n_layers})")
        self.model, self.tokenizer, self.layer = model, tokenizer, layer
        self.max_tokens, self.batch = max_tokens, batch
        bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
        if bos is None and eos is None:
            raise ActivationError("model: its tokenizer has neither a BOS nor an EOS token")
        self.bos = bos if bos is not None else eos
        self.pad = eos if eos is not None else bos

    @classmethod
    def load(cls, model_dir: str | Path, layer: int, **kw: Any) -> TextEncoder:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(model_dir)
        if not (path / "config.json").is_file():
            raise ActivationError(f"model: {path} is not an HF model folder (no config.json)")
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        model.eval().requires_grad_(False)
        return cls(model, tokenizer, layer, **kw)

    def token_ids(self, text: str) -> list[int]:
        """The text's ids, without special tokens, cut to ``max_tokens`` (at least one id)."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"][:self.max_tokens]
        return ids or [self.pad]

    def token_strings(self, ids: Sequence[int]) -> list[str]:
        return [self.tokenizer.decode([i]) for i in ids]

    def encode(self, texts: Sequence[str],
               on_batch: Callable[[int], None] | None = None) -> Iterator[Encoded]:
        """Each text's rows, in order of increasing length (``Encoded.index`` says which)."""
        all_ids = [self.token_ids(t) for t in texts]
        order = sorted(range(len(texts)), key=lambda i: len(all_ids[i]))
        for start in range(0, len(order), self.batch):
            chunk = order[start:start + self.batch]
            width = max(len(all_ids[i]) for i in chunk)
            contexts = torch.full((len(chunk), width + 1), self.pad, dtype=torch.long)
            contexts[:, 0] = self.bos
            for row, i in enumerate(chunk):
                contexts[row, 1:1 + len(all_ids[i])] = torch.tensor(all_ids[i])
            rows = layer_rows(self.model, self.layer, contexts, len(chunk))
            rows = rows.view(len(chunk), width, -1)
            for row, i in enumerate(chunk):
                yield Encoded(i, all_ids[i], rows[row, :len(all_ids[i])])
            if on_batch is not None:
                on_batch(len(chunk))
