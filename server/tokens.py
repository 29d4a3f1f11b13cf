"""Token id -> text for traces, with the served model's own tokenizer.json."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

TokenText = Callable[[int], str]


class TokenTexts:
    """One decoder per model, loaded on first use; None when the model is not a folder with a
    tokenizer.json (traces then carry ids without text)."""

    def __init__(self) -> None:
        self._decoders: dict[str, TokenText | None] = {}

    def __contains__(self, model: str) -> bool:
        """Whether the model's decoder is loaded (or known to be missing) already."""
        return model in self._decoders

    def for_model(self, model: str) -> TokenText | None:
        if model not in self._decoders:
            self._decoders[model] = _load(Path(model) / "tokenizer.json")
        return self._decoders[model]


def _load(path: Path) -> TokenText | None:
    if not path.is_file():
        return None
    try:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(path))
    except Exception as exc:  # a broken tokenizer file costs token text, not the monitor
        log.warning("no token text for %s: %s", path.parent, exc)
        return None
    return lambda i: tok.decode([i], skip_special_tokens=False)
