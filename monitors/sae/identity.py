"""An SAE's identity: a content hash of its weights, with its name and hook for people.

Feature indices and probes mean something only in the SAE they were found in, so rules record
the identity of the SAE they were written for (``monitors.rules.binding``). Two SAEs are the
same when their hashes are: the name and hook are shown beside the hash, never compared.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import Tensor

__all__ = ["HASH_CHARS", "SAEIdentity", "sae_name", "weights_sha256"]

HASH_CHARS = 16
"""Hex digits of the weights' sha256 an identity keeps (64 bits: enough to tell SAEs apart)."""


class SAEIdentity(BaseModel):
    """Which SAE: the first 16 hex digits of the sha256 of its weights (`weights_sha256`),
    and its name and hook as shown to people."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(default="", max_length=128)
    """The SAE's name: the model it was trained on, else its folder (``gemma-3-270m``)."""
    hook: str = Field(default="", max_length=128)
    """The hook it reads (``blocks.9.hook_resid_post``)."""
    sha256: str
    """First 16 hex digits of `weights_sha256` (``latentguard sae identity PATH`` prints it)."""

    @field_validator("sha256")
    @classmethod
    def _hex(cls, value: str) -> str:
        if not re.fullmatch(rf"[0-9a-f]{{{HASH_CHARS}}}", value):
            raise ValueError(f"expected {HASH_CHARS} lowercase hex digits, the start of the "
                             "sha256 of the SAE's weights (`latentguard sae identity PATH` "
                             "prints it)")
        return value

    def same_sae(self, other: SAEIdentity) -> bool:
        """True when both name the same weights (the name and hook are not compared)."""
        return self.sha256 == other.sha256

    def __str__(self) -> str:
        label = "/".join(x for x in (self.name, self.hook) if x) or "SAE"
        return f"{label} (sha256 {self.sha256})"


def weights_sha256(tensors: Mapping[str, Tensor]) -> str:
    """Hex sha256 of an SAE's weights, whatever file held them: for each tensor in name order,
    the line ``name dtype shape\\n`` (``W_dec torch.float16 8192,640``) then its bytes in C
    order (the converters give SAELens layout, so one SAE saved in two formats hashes alike
    when the dtype is the same)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        shape = ",".join(str(n) for n in t.shape)
        h.update(f"{name} {t.dtype} {shape}\n".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().data)  # the bytes, not copied
    return h.hexdigest()


def sae_name(model_name: str, hook_name: str, path: str | Path) -> str:
    """The name an identity shows: the model the SAE was trained on, else its folder (the
    folder above when the folder is named after the hook, as SAELens releases lay them out)."""
    if model_name:
        return model_name
    p = Path(path)
    folder = p if p.is_dir() else p.parent
    return folder.parent.name if folder.name == hook_name else folder.name

