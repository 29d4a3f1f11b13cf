"""What the evaluations in ``bench/`` share, so that each script says only what it measures.

- the command line every evaluation takes (``eval_parser``) and the line it records
  (``command_line``);
- the data sets: JSONL rows with ``id``, ``text``, ``label``, ``split`` and ``source``
  (``read_rows``, ``load_split``, ``labels``, ``class_counts``);
- the activation cache: the residual rows of each text, computed once per model, layer, token
  limit and texts and kept in safetensors (``split_residuals``), because running the model is
  the slow part and every rule can be re-chosen, with another SAE too, from the same rows;
- results as dataclasses: what a method measured (written to ``metrics.json`` by
  ``write_results``) apart from what it fitted (``Fitted.direction``, saved as a probe), so
  nothing written has to be picked out of a dict first; ``read_results`` reads a file back
  into its dataclass, refusing keys that are not its fields (the README tables and the tests
  read these files, so their shape must not drift).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import random
import sys
import time
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar, Union

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from latentguard.lab.activations import TextEncoder
from latentguard.lab.discovery import progress_bar
from latentguard.monitors.discovery import auroc, recall_at_fpr

logger = logging.getLogger(__name__)

#: The false-positive rate every threshold is set at (the ``1pct`` of the metric names).
FPR = 0.01

Row = dict[str, Any]


# ---- command line ---------------------------------------------------------------------------

def eval_parser(doc: str, data_help: str) -> argparse.ArgumentParser:
    """The arguments every evaluation here takes: model, SAE, layer, data, results folder and
    seed."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--model", required=True, help="HF model folder")
    p.add_argument("--sae", required=True, help="SAE folder")
    p.add_argument("--layer", type=int, help="decoder layer (default: the SAE's)")
    p.add_argument("--data", type=Path, required=True, help=data_help)
    p.add_argument("--out", type=Path, required=True, help="results folder")
    p.add_argument("--seed", type=int, default=0, help="seeds the samples, fits and generation")
    return p


def command_line(module: str, argv: Sequence[str] | None) -> str:
    """How to run again what wrote a results file: ``python -m bench.NAME ARGS``."""
    return " ".join(["python -m", module, *(sys.argv[1:] if argv is None else argv)])


# ---- data -----------------------------------------------------------------------------------

def read_rows(path: Path) -> list[Row]:
    """Every record of a JSONL data set."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip()]


def load_split(path: Path, split: str, max_pos: int | None, max_neg: int | None,
               seed: int) -> list[Row]:
    """The split's rows: up to ``max_pos`` of label 1 and ``max_neg`` of label 0 (a seeded
    sample, then sorted by id, so a run does not depend on the file's order)."""
    part = [r for r in read_rows(path) if r["split"] == split]
    rng = random.Random(f"{seed}:{split}")
    chosen = []
    for label, limit in ((1, max_pos), (0, max_neg)):
        group = [r for r in part if int(r["label"]) == label]
        if limit is not None and len(group) > limit:
            group = rng.sample(group, limit)
        chosen += sorted(group, key=lambda r: r["id"])
    n_pos = sum(int(r["label"]) for r in chosen)
    if not n_pos or n_pos == len(chosen):
        raise SystemExit(f"{path}: the {split} split needs both unsafe and clean snippets "
                         f"(has {n_pos} unsafe of {len(chosen)})")
    return chosen


def labels(rows: Sequence[Row]) -> Tensor:
    return torch.tensor([int(r["label"]) for r in rows])


def class_counts(splits: dict[str, Sequence[Row]], classes: tuple[str, str]
                 ) -> dict[str, dict[str, int]]:
    """Per split, how many rows have label 1 (``classes[0]``) and label 0 (``classes[1]``)."""
    return {name: {classes[0]: sum(int(r["label"]) for r in rows),
                   classes[1]: sum(1 - int(r["label"]) for r in rows)}
            for name, rows in splits.items()}


# ---- the activation cache -------------------------------------------------------------------

def cache_key(model: str, layer: int, max_tokens: int, texts: Sequence[str]) -> str:
    """What cached rows depend on: the model, layer, token limit and texts (not the SAE)."""
    blob = json.dumps([str(Path(model).resolve()), layer, max_tokens, list(texts)])
    return hashlib.sha256(blob.encode()).hexdigest()


@torch.no_grad()
def residual_rows(encoder: Callable[[], TextEncoder], texts: Sequence[str], what: str,
                  cache: Path | None = None, key: str = "") -> list[Tensor]:
    """Each text's residual rows ``[T, d_model]``, from ``cache`` when it holds ``key``.

    The cache (safetensors: all rows and the lengths) depends on the model, layer, token limit
    and texts only, so the rule can be re-chosen with another SAE without running the model;
    ``encoder`` is called only when the rows have to be computed.
    """
    if cache is not None and cache.is_file():
        with safe_open(str(cache), "pt") as f:
            if (f.metadata() or {}).get("key") == key:
                lengths = f.get_tensor("lengths").tolist()
                logger.info("%s: residual rows from %s", what, cache)
                return list(f.get_tensor("rows").split(lengths))
        logger.info("%s: %s is for other snippets or settings; recomputing", what, cache)
    rows: list[Tensor] = [torch.zeros(0)] * len(texts)
    with progress_bar() as bar:
        task = bar.add_task(what, total=len(texts))
        for enc in encoder().encode(texts, lambda k: bar.update(task, advance=k)):
            rows[enc.index] = enc.rows.clone()
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        save_file({"rows": torch.cat(rows), "lengths": torch.tensor([len(r) for r in rows])},
                  str(cache), metadata={"key": key})
    return rows


@dataclass
class Residuals:
    """Each split's residual rows (one ``[T, d_model]`` tensor per text) and the time taken."""

    rows: dict[str, list[Tensor]]
    seconds: float

    @property
    def tokens(self) -> int:
        return sum(len(r) for rows in self.rows.values() for r in rows)


def split_residuals(model: str, layer: int, splits: dict[str, Sequence[str]], *,
                    max_tokens: int, batch: int, cache: Path | None = None) -> Residuals:
    """The residual rows of each split's texts after ``layer``, cached per split in
    ``cache/SPLIT.safetensors``; the model is loaded once, and only if a split is not cached."""
    loaded: list[TextEncoder] = []

    def encoder() -> TextEncoder:
        if not loaded:
            loaded.append(TextEncoder.load(model, layer, max_tokens=max_tokens, batch=batch))
        return loaded[0]

    start = time.perf_counter()
    rows = {name: residual_rows(encoder, texts, name,
                                cache / f"{name}.safetensors" if cache else None,
                                cache_key(model, layer, max_tokens, texts))
            for name, texts in splits.items()}
    return Residuals(rows, time.perf_counter() - start)


# ---- results --------------------------------------------------------------------------------

@dataclass
class Heldout:
    """A score on the held-out split: ranking, and the recall a threshold buys at what FPR."""

    auroc: float
    recall_at_1pct_fpr: float
    """With the threshold set on the held-out negatives (``threshold_at_1pct_fpr``)."""
    threshold_at_1pct_fpr: float
    recall_at_train_threshold: float
    """With the threshold set on train: what a deployed rule would do."""
    fpr_at_train_threshold: float


def heldout_metrics(pos: Tensor, neg: Tensor, train_threshold: float) -> Heldout:
    recall, t = recall_at_fpr(pos, neg, FPR)
    return Heldout(auroc=float(auroc(pos, neg)), recall_at_1pct_fpr=recall,
                   threshold_at_1pct_fpr=t,
                   recall_at_train_threshold=float((pos > train_threshold).double().mean()),
                   fpr_at_train_threshold=float((neg > train_threshold).double().mean()))


class Measured(Protocol):
    """Any candidate's metrics: how it ranks train and held-out texts."""

    train_auroc: float
    heldout: Heldout


M = TypeVar("M")


@dataclass
class Fitted(Generic[M]):
    """A fitted method: its ``metrics`` (written to the results) and, apart, the ``direction``
    it learnt (saved as a probe; a tensor has no place in JSON)."""

    metrics: M
    direction: Tensor


def write_results(path: Path, results: Any) -> None:
    """``results`` (a dataclass of plain values and dataclasses) as indented JSON."""
    if not dataclasses.is_dataclass(results) or isinstance(results, type):
        raise TypeError(f"write_results takes a dataclass instance, not {type(results)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dataclasses.asdict(results), indent=2) + "\n", encoding="utf-8")


R = TypeVar("R")


def read_results(path: Path, cls: type[R]) -> R:
    """A results JSON read back into its dataclass ``cls``: exactly its fields, nested
    dataclasses rebuilt (a key missing or extra is an error, naming the dataclass)."""
    return _build(cls, json.loads(path.read_text(encoding="utf-8")))


def _build(tp: Any, value: Any) -> Any:
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        fields = dataclasses.fields(tp)
        if not isinstance(value, dict) or set(value) != {f.name for f in fields}:
            got = sorted(value) if isinstance(value, dict) else type(value).__name__
            raise ValueError(f"{tp.__name__} has fields {[f.name for f in fields]}, got {got}")
        hints = typing.get_type_hints(tp)
        return tp(**{f.name: _build(hints[f.name], value[f.name]) for f in fields})
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is list:
        return [_build(args[0], v) for v in value]
    if origin is dict:
        return {k: _build(args[1], v) for k, v in value.items()}
    if origin in (Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        if value is None or len(options) != 1:
            return value
        return _build(options[0], value)
    return value
