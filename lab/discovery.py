"""``latentguard features contrast`` and ``features top``: feature discovery on real text.

Texts go through the HF model, which stops right after the SAE's layer (the capture of
:func:`latentguard.lab.training.layer_rows`), each starting with BOS, whose row is left out
as in training. Texts are sorted by length and run in right-padded batches: the models are
causal, so the padding never changes the rows of the real tokens, and padded rows are dropped.
The ranking and context logic is :mod:`latentguard.monitors.discovery`.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text
from torch import Tensor

from latentguard.lab.activations import TextEncoder
from latentguard.lab.errors import DiscoveryError
from latentguard.monitors.catalog import FeatureCatalog
from latentguard.monitors.discovery import Context, FeatureScore, rank_features, top_contexts
from latentguard.monitors.errors import MonitorError
from latentguard.monitors.sae import SAE, load_sae

__all__ = [
    "DiscoveryError", "add_contrast_arguments", "add_top_arguments",
    "contrast", "read_texts", "run_contrast", "run_top", "top",
]

logger = logging.getLogger(__name__)

TEXT_SUFFIXES = (".py", ".txt", ".md", ".rst", ".json", ".jsonl")


# ---- texts ----------------------------------------------------------------------------------

def read_texts(paths: Sequence[str | Path], lines: int = 0, limit: int = 0,
               seed: int = 0) -> list[str]:
    """Texts from files and folders.

    A folder gives one text per file (sorted, any suffix of ``TEXT_SUFFIXES``); a ``.txt`` file
    one text per non-empty line; a ``.jsonl`` file one per line (a JSON string, or an object with
    a ``text`` field; ``FILE.jsonl:label=1,split=train`` keeps the objects whose fields have those
    values); any other file is one text. With ``lines`` > 0, texts longer than that many lines are
    cut into pieces of ``lines`` lines; with ``limit`` > 0, at most that many are kept (a seeded
    sample, in their original order).
    """
    texts: list[str] = []
    for raw in paths:
        path, where = _jsonl_filter(str(raw))
        if where is not None:
            texts += _jsonl_texts(path, where)
        elif path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
            texts += [t for t in (_read(p) for p in files) if t.strip()]
        elif path.is_file():
            if path.suffix == ".txt":
                texts += [line for line in _read(path).splitlines() if line.strip()]
            elif path.suffix == ".jsonl":
                texts += _jsonl_texts(path)
            elif (text := _read(path)).strip():
                texts.append(text)
        else:
            raise DiscoveryError(f"{path}: no such file or folder")
    if not texts:
        raise DiscoveryError(f"no texts found in {', '.join(map(str, paths))}")
    if lines > 0:
        texts = [piece for t in texts for piece in _pieces(t, lines)]
    if 0 < limit < len(texts):
        keep = sorted(random.Random(seed).sample(range(len(texts)), limit))
        texts = [texts[i] for i in keep]
    return texts


def _jsonl_filter(raw: str) -> tuple[Path, dict[str, str] | None]:
    """``FILE.jsonl:k=v,k2=v2`` -> (FILE.jsonl, {k: v, k2: v2}); anything else -> (path, None)."""
    head, sep, tail = raw.rpartition(":")
    if not sep or not head.endswith(".jsonl") or "=" not in tail or Path(raw).exists():
        return Path(raw), None
    where = {}
    for cond in tail.split(","):
        key, eq, value = cond.partition("=")
        if not eq or not key:
            raise DiscoveryError(f"{raw}: expected FILE.jsonl:key=value[,key=value...]")
        where[key] = value
    if not Path(head).is_file():
        raise DiscoveryError(f"{head}: no such file or folder")
    return Path(head), where


def _pieces(text: str, lines: int) -> list[str]:
    split = text.splitlines(keepends=True)
    pieces = ["".join(split[i:i + lines]) for i in range(0, len(split), lines)]
    return [p for p in pieces if p.strip()]


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DiscoveryError(f"{path}: cannot read ({exc})") from None


def _jsonl_texts(path: Path, where: dict[str, str] | None = None) -> list[str]:
    out = []
    for n, line in enumerate(_read(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DiscoveryError(f"{path}:{n}: not JSON ({exc.msg})") from None
        if where and not (isinstance(item, dict) and all(
                str(item.get(k)) == v for k, v in where.items())):
            continue
        text = item.get("text") if isinstance(item, dict) else item
        if not isinstance(text, str):
            raise DiscoveryError(f"{path}:{n}: expected a string or an object with 'text'")
        out.append(text)
    return out


# ---- model ----------------------------------------------------------------------------------

def load_sae_for(path: str | Path) -> SAE:
    try:
        return load_sae(path)
    except MonitorError as exc:
        raise DiscoveryError(f"sae: {exc}") from None


def progress_bar(enabled: bool = True) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeRemainingColumn(), disable=not enabled, transient=True)


# ---- contrast and top -----------------------------------------------------------------------

def pooled_features(encoder: TextEncoder, sae: SAE, texts: Sequence[str], pooling: str = "max",
                    progress: Progress | None = None, what: str = "texts") -> Tensor:
    """[n, d_sae]: each text's SAE activations pooled (max or mean) over its tokens."""
    out = torch.zeros(len(texts), sae.d_sae)
    task = progress.add_task(what, total=len(texts)) if progress is not None else None

    def advance(n: int) -> None:
        if progress is not None and task is not None:
            progress.update(task, advance=n)

    for enc in encoder.encode(texts, advance):
        acts = sae.encode(enc.rows)
        out[enc.index] = acts.amax(0) if pooling == "max" else acts.mean(0)
    return out


def contrast(encoder: TextEncoder, sae: SAE, a: Sequence[str], b: Sequence[str], *,
             top: int = 20, pooling: str = "max", direction: str = "a",
             progress: bool = False) -> list[FeatureScore]:
    """Features ranked by how well they separate texts ``a`` from ``b``."""
    with progress_bar(progress) as bar:
        pa = pooled_features(encoder, sae, a, pooling, bar, "set A")
        pb = pooled_features(encoder, sae, b, pooling, bar, "set B")
    return rank_features(pa, pb, top=top, direction=direction)  # type: ignore[arg-type]


@dataclass(frozen=True)
class TokenContext:
    context: Context
    tokens: list[str]


def top(encoder: TextEncoder, sae: SAE, texts: Sequence[str], feature: int, *, n: int = 10,
        progress: bool = False) -> list[TokenContext]:
    """The ``n`` texts where ``feature`` fires most, with their token strings."""
    if not 0 <= feature < sae.d_sae:
        raise DiscoveryError(f"feature: {feature} is out of range 0..{sae.d_sae - 1}")
    columns: list[Tensor] = [torch.zeros(0)] * len(texts)
    ids: list[list[int]] = [[] for _ in texts]
    with progress_bar(progress) as bar:
        task = bar.add_task("corpus", total=len(texts))
        for enc in encoder.encode(texts, lambda k: bar.update(task, advance=k)):
            columns[enc.index] = sae.encode(enc.rows)[:, feature].clone()
            ids[enc.index] = enc.ids
    return [TokenContext(c, encoder.token_strings(ids[c.text]))
            for c in top_contexts(columns, feature, n)]


# ---- rendering ------------------------------------------------------------------------------

def load_catalog(sae_dir: str | Path, catalog: str | None, d_sae: int) -> FeatureCatalog | None:
    path = Path(catalog) if catalog else Path(sae_dir) / "features.json"
    if not path.is_file():
        if catalog:
            raise DiscoveryError(f"catalog: {path} not found")
        return None
    try:
        return FeatureCatalog.load(path, d_sae=d_sae)
    except MonitorError as exc:
        raise DiscoveryError(f"catalog: {exc}") from None


def _label(catalog: FeatureCatalog | None, index: int) -> str:
    if catalog is None or index not in catalog.entries:
        return ""
    return catalog.entries[index].label


def contrast_table(scores: Sequence[FeatureScore], catalog: FeatureCatalog | None,
                   n_a: int, n_b: int) -> Table:
    table = Table(title=f"features separating A ({n_a} texts) from B ({n_b} texts)")
    for name in ("#", "feature", "AUROC", "mean A", "mean B", "diff", "active A", "active B",
                 "label"):
        table.add_column(name, justify="left" if name == "label" else "right")
    for rank, s in enumerate(scores, start=1):
        table.add_row(str(rank), str(s.index), f"{s.auroc:.3f}", f"{s.mean_a:.3f}",
                      f"{s.mean_b:.3f}", f"{s.mean_diff:+.3f}", f"{s.frac_active_a:.0%}",
                      f"{s.frac_active_b:.0%}", _label(catalog, s.index))
    return table


def context_text(ctx: TokenContext, width: int = 24) -> Text:
    """Tokens around the strongest one, each styled by its activation (relative to the max)."""
    c = ctx.context
    lo, hi = max(0, c.position - width), min(len(ctx.tokens), c.position + width + 1)
    out = Text("..." if lo else "", style="dim")
    for pos in range(lo, hi):
        v = float(c.values[pos])
        token = ctx.tokens[pos]
        if pos == c.position:
            style = "bold black on bright_red"
        elif v > 0.5 * c.value:
            style = "black on red"
        elif v > 0:
            style = "black on yellow"
        else:
            style = ""
        out.append(token, style=style)
    if hi < len(ctx.tokens):
        out.append("...", style="dim")
    return out


# ---- CLI ------------------------------------------------------------------------------------

def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="HF model folder")
    p.add_argument("--sae", required=True, help="SAE folder (its layer is read)")
    p.add_argument("--layer", type=int, help="decoder layer (default: the SAE's)")
    p.add_argument("--catalog", help="feature catalog (default: SAE/features.json if present)")
    p.add_argument("--max-tokens", type=int, default=256, help="tokens kept per text")
    p.add_argument("--batch", type=int, default=8, help="texts per model forward")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--quiet", action="store_true", help="no progress display")


def add_contrast_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--a", nargs="+", required=True, metavar="FILE_OR_DIR",
                   help="set A (the texts to find features for): files, folders, .txt lines, "
                   ".jsonl (FILE.jsonl:label=1 keeps objects with that field value)")
    p.add_argument("--b", nargs="+", required=True, metavar="FILE_OR_DIR",
                   help="set B (the contrast texts)")
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--pooling", choices=("max", "mean"), default="max",
                   help="per-text value of a feature: max or mean over tokens")
    p.add_argument("--direction", choices=("a", "both"), default="a",
                   help="a: features higher on A; both: either way")
    p.add_argument("--lines", type=int, default=0,
                   help="cut longer texts into pieces of this many lines (0: never)")
    p.add_argument("--limit", type=int, default=0,
                   help="at most this many texts per set, a seeded sample (0: all)")
    _add_common(p)


def add_top_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("feature", type=int)
    p.add_argument("--corpus", nargs="+", required=True, metavar="FILE_OR_DIR")
    p.add_argument("--n", type=int, default=10, help="contexts shown")
    p.add_argument("--lines", type=int, default=40,
                   help="cut longer texts into pieces of this many lines (0: never)")
    p.add_argument("--limit", type=int, default=0,
                   help="at most this many texts, a seeded sample (0: all)")
    p.add_argument("--width", type=int, default=24, help="tokens shown each side")
    _add_common(p)


def _setup(args: argparse.Namespace) -> tuple[TextEncoder, SAE, FeatureCatalog | None]:
    sae = load_sae_for(args.sae)
    layer = sae.layer if args.layer is None else args.layer
    if layer != sae.layer:
        logger.warning("layer %d given, the SAE reads layer %d", layer, sae.layer)
    encoder = TextEncoder.load(args.model, layer, max_tokens=args.max_tokens, batch=args.batch)
    return encoder, sae, load_catalog(args.sae, args.catalog, sae.d_sae)


def run_contrast(args: argparse.Namespace, console: Console) -> None:
    a = read_texts(args.a, args.lines, args.limit)
    b = read_texts(args.b, args.lines, args.limit)
    encoder, sae, catalog = _setup(args)
    scores = contrast(encoder, sae, a, b, top=args.top, pooling=args.pooling,
                      direction=args.direction, progress=not args.quiet)
    if args.json:
        console.print_json(json.dumps({"n_a": len(a), "n_b": len(b), "pooling": args.pooling,
                                       "features": [asdict(s) | {"mean_diff": s.mean_diff,
                                                    "label": _label(catalog, s.index)}
                                                    for s in scores]}))
    else:
        console.print(contrast_table(scores, catalog, len(a), len(b)))


def run_top(args: argparse.Namespace, console: Console) -> None:
    texts = read_texts(args.corpus, args.lines, args.limit)
    encoder, sae, catalog = _setup(args)
    found = top(encoder, sae, texts, args.feature, n=args.n, progress=not args.quiet)
    if args.json:
        console.print_json(json.dumps([
            {"text": c.context.text, "position": c.context.position, "value": c.context.value,
             "token": c.tokens[c.context.position], "tokens": c.tokens,
             "values": [round(float(v), 5) for v in c.context.values]} for c in found]))
        return
    label = _label(catalog, args.feature)
    console.print(f"feature {args.feature}{': ' + label if label else ''} - top {len(found)} "
                  f"of {len(texts)} texts")
    if not found:
        console.print("it never fires on this corpus")
    for rank, c in enumerate(found, start=1):
        console.print(Text(f"#{rank} text {c.context.text} token {c.context.position} "
                           f"({c.tokens[c.context.position]!r}) = {c.context.value:.3f}",
                           style="bold"))
        console.print(context_text(c, args.width))
