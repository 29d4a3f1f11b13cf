"""Feature catalog: labels, descriptions and tags per SAE feature, searchable by text.

Read from a JSON or YAML file next to the SAE (``features.json``). Accepted shapes::

    {"features": [{"index": 12, "label": "...", "description": "...", "tags": ["..."]}]}
    [{"index": 12, "label": "..."}, ...]           # a bare list
    {"12": {"label": "..."}, "13": "a label"}       # keyed by index

``index`` may be a numeric string (Neuronpedia exports). Without a ``label`` the first line of
the description (shortened) is used.
"""

from __future__ import annotations

import builtins
import json
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from latentguard.monitors.errors import NotFoundError, SAEFormatError

__all__ = ["FeatureCatalog", "FeatureEntry"]

_WORD = re.compile(r"[a-z0-9]+")
LABEL_MAX = 120


class FeatureEntry(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    index: int = Field(ge=0)
    label: str = ""
    description: str = ""
    tags: tuple[str, ...] = ()


class FeatureCatalog:
    def __init__(self, entries: list[FeatureEntry], d_sae: int | None = None) -> None:
        self.d_sae = d_sae
        self.entries: dict[int, FeatureEntry] = {}
        for e in entries:
            if d_sae is not None and e.index >= d_sae:
                raise NotFoundError(f"catalog feature {e.index} out of range (d_sae {d_sae})")
            self.entries[e.index] = e
        self._text = {
            i: (e.label.lower(), e.description.lower(), [t.lower() for t in e.tags])
            for i, e in self.entries.items()
        }

    def __len__(self) -> int:
        return len(self.entries)

    @classmethod
    def load(cls, path: str | Path, d_sae: int | None = None) -> FeatureCatalog:
        p = Path(path)
        if not p.is_file():
            raise SAEFormatError(p, "catalog file not found")
        try:
            text = p.read_text(encoding="utf-8")
            data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as exc:
            raise SAEFormatError(p, f"cannot parse catalog: {exc}") from None
        entries = []
        for n, raw in enumerate(_raw_entries(data, p)):
            try:
                entry = FeatureEntry.model_validate(raw)
            except ValidationError as exc:
                err = exc.errors()[0]
                where = f"features[{n}]." + ".".join(str(x) for x in err["loc"])
                raise SAEFormatError(p, str(err["msg"]), key=where) from None
            if not entry.label and entry.description:
                label = entry.description.strip().splitlines()[0][:LABEL_MAX]
                entry = entry.model_copy(update={"label": label})
            entries.append(entry)
        try:
            return cls(entries, d_sae=d_sae)
        except NotFoundError as exc:
            raise SAEFormatError(p, str(exc)) from None

    def labels(self) -> dict[int, str]:
        return {i: e.label for i, e in self.entries.items()}

    def get(self, index: int) -> FeatureEntry:
        """The entry of feature ``index``; NotFoundError when the catalog has none."""
        try:
            return self.entries[index]
        except KeyError:
            raise NotFoundError(f"feature {index} is not in the catalog") from None

    def list(self, offset: int = 0, limit: int = 100) -> list[FeatureEntry]:
        """Entries in index order, ``limit`` of them from ``offset``."""
        if offset < 0 or limit < 0:
            raise NotFoundError(f"offset and limit must be >= 0, got {offset}, {limit}")
        return [self.entries[i] for i in sorted(self.entries)[offset : offset + limit]]

    def search(self, text: str, limit: int = 20) -> builtins.list[FeatureEntry]:
        """Entries matching ``text`` (case-insensitive), best first.

        Ranking: exact label > label contains the query > description contains it, plus points
        for each query word found in the label, tags, then description; ties by index.
        """
        query = text.strip().lower()
        words = _WORD.findall(query)
        if not query or limit <= 0:
            return []
        scored = []
        for i, (label, desc, tags) in self._text.items():
            score = 0.0
            if label == query:
                score += 100
            elif query in label:
                score += 50
            if query in desc:
                score += 20
            label_words = set(_WORD.findall(label))
            for w in words:
                if w in label_words:
                    score += 10
                elif w in label:
                    score += 5
                if any(w in t for t in tags):
                    score += 8
                if w in desc:
                    score += 2
            if score > 0:
                scored.append((-score, i))
        scored.sort()
        return [self.entries[i] for _, i in scored[:limit]]


def _raw_entries(data: Any, path: Path) -> list[dict[str, Any]]:
    if isinstance(data, dict) and "features" in data:
        data = data["features"]
    if isinstance(data, list):
        if not all(isinstance(x, dict) for x in data):
            raise SAEFormatError(path, "every catalog entry must be an object", key="features")
        return data
    if isinstance(data, dict):
        out = []
        for key, value in data.items():
            if not str(key).isdigit():
                raise SAEFormatError(path, "expected a feature index as key", key=str(key))
            entry = value if isinstance(value, dict) else {"label": str(value)}
            out.append({**entry, "index": int(key)})
        return out
    raise SAEFormatError(path, f"expected a list or an object, got {type(data).__name__}")
