"""Safe readers shared by the format converters: JSON, safetensors and npz, nothing pickled."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from latentguard.monitors.errors import SAEFormatError
from latentguard.monitors.sae.hooks import HookSite, parse_hook_name

__all__ = [
    "check_keys",
    "hook_site",
    "need",
    "read_json",
    "read_npz",
    "read_safetensors",
    "refuse",
    "require",
]


def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise SAEFormatError(path, "file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SAEFormatError(path, f"cannot read JSON: {exc}") from None
    if not isinstance(data, dict):
        raise SAEFormatError(path, f"expected a JSON object, got {type(data).__name__}")
    return data


def read_safetensors(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise SAEFormatError(path, "file not found")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise SAEFormatError(path, f"cannot read safetensors: {exc}") from None


def read_npz(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise SAEFormatError(path, "file not found")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: torch.from_numpy(np.array(data[k])) for k in data.files}
    except (OSError, ValueError, EOFError) as exc:
        raise SAEFormatError(path, f"cannot read npz: {exc}") from None


def need(data: dict[str, Any], key: str, path: Path) -> Any:
    """``data[key]`` or an SAEFormatError naming the file and the key."""
    if key not in data:
        raise SAEFormatError(path, "missing key", key=key)
    return data[key]


def require(data: dict[str, Any], key: str, kind: type, path: Path) -> Any:
    """Like :func:`need`, also checking the JSON type (bool is not accepted as int)."""
    value = need(data, key, path)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise SAEFormatError(
            path, f"expected {kind.__name__}, got {type(value).__name__}", key=key
        )
    return value


def check_keys(
    data: dict[str, Any], known: frozenset[str] | set[str], path: Path, prefix: str = ""
) -> None:
    """Refuse the first key of ``data`` not in ``known``, by name.

    Why: a field the loader neither implements nor lists as metadata may change what the SAE
    computes; ignoring it would encode different features from the format's own code.
    """
    unknown = sorted(set(data) - set(known))
    if unknown:
        key = unknown[0]
        raise SAEFormatError(
            path,
            f"unknown field (value {data[key]!r}); this loader does not implement it",
            key=prefix + key,
        )


def refuse(path: Path, key: str, value: Any, why: str) -> NoReturn:
    """Raise an SAEFormatError for a known field whose value is not implemented."""
    raise SAEFormatError(path, f"value {value!r} is not supported: {why}", key=key)


def hook_site(hook_name: str, path: Path, key: str = "hook_name") -> HookSite:
    site = parse_hook_name(hook_name)
    if site is None:
        raise SAEFormatError(
            path,
            f"cannot map hook name {hook_name!r} to a layer; pass hook_name= to load_sae",
            key=key,
        )
    return site


def layer_from_path(path: Path) -> int | None:
    """A ``layer_12`` path component (Gemma Scope layout), if any."""
    for part in reversed(path.parts):
        match = re.fullmatch(r"layer_(\d+)", part)
        if match:
            return int(match.group(1))
    return None
