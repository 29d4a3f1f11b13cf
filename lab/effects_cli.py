"""``latentguard features effect``: arguments, the run, and the table (the measurement is
:mod:`latentguard.lab.effects`)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from latentguard.lab.activations import TextEncoder
from latentguard.lab.directions import (
    Direction,
    EffectError,
    feature_direction,
    load_direction,
    mean_difference,
    vector_direction,
)
from latentguard.lab.discovery import load_catalog, load_sae_for, progress_bar, read_texts
from latentguard.lab.effects import (
    Condition,
    DirectionInfo,
    EffectReport,
    FeatureCosine,
    TargetShift,
    TokenShift,
    measure_effects,
    read_prompts,
)
from latentguard.lab.errors import DiscoveryError
from latentguard.monitors.catalog import FeatureCatalog
from latentguard.monitors.sae import SAE

__all__ = ["add_effect_arguments", "describe_direction", "effect_table", "run_effect"]

logger = logging.getLogger(__name__)


def add_effect_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="HF model folder")
    p.add_argument("--sae", required=True, help="SAE folder: steering happens at its layer")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--feature", type=int, help="steer this SAE feature (its decoder row)")
    what.add_argument("--direction", metavar="FILE[:NAME]",
                      help="steer along a vector in a safetensors file (tensor NAME, else "
                      "'direction', e.g. a residual probe's probes/NAME.safetensors)")
    what.add_argument("--mean-diff", nargs=2, metavar=("POS", "NEG"),
                      help="steer along the mean residual of POS texts minus that of NEG texts "
                      "(files, folders, .txt lines, .jsonl; FILE.jsonl:label=1 filters)")
    p.add_argument("--prompts", nargs="+", default=[], metavar="FILE",
                   help="prompt files: .jsonl (a string, or an object's 'prompt' else 'text' "
                   "per line), .txt (one per line), folders or other files (one each)")
    p.add_argument("--prompt", action="append", default=[], metavar="TEXT",
                   help="a prompt (repeatable)")
    p.add_argument("--mode", choices=("clamp", "add", "ablate"), default="clamp",
                   help="as in a rule's steer: clamp the feature (or the projection on a "
                   "vector) to each strength, add each strength of it, or ablate it")
    p.add_argument("--strengths", nargs="+", type=float, default=[], metavar="S",
                   help="clamp values or added strengths, one condition each (not for ablate)")
    p.add_argument("--target", action="append", default=[], metavar="TOKEN",
                   help="a string whose first token's log-prob change is reported (repeatable)")
    p.add_argument("--preserve-norm", action="store_true",
                   help="rescale each steered row to its original norm (as the rule option)")
    p.add_argument("--skip-bos", action="store_true",
                   help="do not steer the BOS position (the plugin steers every prompt row)")
    p.add_argument("--top", type=int, default=10, help="tokens gained and lost kept")
    p.add_argument("--catalog", help="feature catalog (default: SAE/features.json if present)")
    p.add_argument("--max-tokens", type=int, default=256,
                   help="tokens per prompt (a longer one keeps its last ones) or mean-diff text")
    p.add_argument("--batch", type=int, default=4, help="prompts per model forward")
    p.add_argument("--device", default="cpu", help="torch device for the model and SAE")
    p.add_argument("--out", help="write the report as JSON to this file")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--quiet", action="store_true", help="no progress display")


def _label(catalog: FeatureCatalog | None, feature: int) -> str:
    entry = catalog.entries.get(feature) if catalog is not None else None
    return entry.label if entry is not None else ""


def conditions_from(mode: str, strengths: list[float]) -> list[Condition]:
    if mode == "ablate":
        if strengths:
            raise EffectError("--strengths: --mode ablate takes no strengths")
        return [Condition("ablate")]
    if not strengths:
        raise EffectError(f"--strengths: --mode {mode} needs at least one strength")
    return [Condition(mode, s) for s in strengths]  # type: ignore[arg-type]


def describe_direction(direction: Direction, sae: SAE, catalog: FeatureCatalog | None,
                       nearest: int = 5) -> DirectionInfo:
    """The report's account of a direction; a vector's nearest SAE features by cosine."""
    near: list[FeatureCosine] = []
    if direction.feature is None:
        rows = sae.W_dec.detach().float().cpu()
        cos = rows @ direction.unit.cpu() / rows.norm(dim=1).clamp_min(1e-12)
        top = cos.topk(min(nearest, sae.d_sae))
        near = [FeatureCosine(feature=int(i), cosine=float(c), label=_label(catalog, int(i)))
                for c, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)]
    label = _label(catalog, direction.feature) if direction.feature is not None else ""
    return DirectionInfo(kind=direction.kind, source=direction.source,
                         feature=direction.feature, label=label, norm=direction.norm,
                         nearest_features=near)


def _check(args: argparse.Namespace) -> None:
    for flag, value, low in (("--top", args.top, 1), ("--max-tokens", args.max_tokens, 1),
                             ("--batch", args.batch, 1)):
        if value < low:
            raise EffectError(f"{flag}: must be at least {low}, got {value}")
    for path in args.prompts:
        if not Path(path).exists():
            raise EffectError(f"--prompts: {path}: no such file or folder")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise EffectError(f"--device: {args.device} asked for, but torch sees no CUDA device")


def run_effect(args: argparse.Namespace, console: Console) -> EffectReport:
    _check(args)
    conditions = conditions_from(args.mode, args.strengths)
    prompts = read_prompts(args.prompts, args.prompt)
    pos = neg = None
    if args.mean_diff:
        try:
            pos, neg = (read_texts([p]) for p in args.mean_diff)
        except DiscoveryError as exc:
            raise EffectError(f"--mean-diff: {exc}") from None
    sae = load_sae_for(args.sae)
    if args.feature is not None and not 0 <= args.feature < sae.d_sae:
        raise EffectError(f"--feature: {args.feature} is out of range 0..{sae.d_sae - 1}")
    catalog = load_catalog(args.sae, args.catalog, sae.d_sae)
    encoder = TextEncoder.load(args.model, sae.layer, max_tokens=args.max_tokens,
                               batch=args.batch)
    encoder.model.to(args.device)
    with progress_bar(not args.quiet) as bar:
        if pos is not None and neg is not None:
            task = bar.add_task("mean-diff texts", total=len(pos) + len(neg))
            vector = mean_difference(encoder, pos, neg, lambda n: bar.update(task, advance=n))
            direction = vector_direction(vector, sae, "mean residual of {} minus {}".format(
                *args.mean_diff), kind="mean-diff", flag="--mean-diff")
        elif args.direction:
            direction = load_direction(args.direction, sae)
        else:
            direction = feature_direction(sae, args.feature)
        info = describe_direction(direction, sae, catalog)
        report = measure_effects(encoder, direction, prompts, conditions, targets=args.target,
                                 top=args.top, skip_bos=args.skip_bos,
                                 preserve_norm=args.preserve_norm, info=info, progress=bar)
    report = report.model_copy(update={"model": str(args.model), "sae": str(args.sae)})
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(report.model_dump_json(indent=2) + "\n", encoding="utf-8")
    if args.json:
        console.print_json(report.model_dump_json())
    else:
        console.print(effect_table(report))
        if args.out:
            console.print(f"report written to {args.out}")
    return report


def _token(s: TokenShift) -> str:
    """The token as text; with its id when it is part of a character (shown as U+FFFD)."""
    return repr(s.text) + (f"#{s.token}" if "\ufffd" in s.text else "")


def _tokens(shifts: list[TokenShift], n: int = 3) -> str:
    return ", ".join(f"{_token(s)} {s.delta:+.3f}" for s in shifts[:n]) or "-"


def _target_name(t: TargetShift) -> str:
    return f"dlogp {t.target!r}" + ("" if t.text == t.target else f" ({t.text!r})")


def effect_table(report: EffectReport) -> Table:
    d = report.direction
    what = d.source + (f" ({d.label})" if d.label else "")
    near = ", ".join(f"{f.feature} ({f.cosine:+.2f})" for f in d.nearest_features)
    table = Table(title=f"steering {what} at layer {report.layer}: next-token effect on "
                  f"{report.n_prompts} prompts",
                  caption=f"unsteered value at the last token: mean {report.value_last_mean:.3g}"
                  f", max over tokens {report.value_max:.3g}; norm {d.norm:.3g}"
                  + (f"; nearest features {near}" if near else "")
                  + "; gained/lost: mean change in probability after the last token")
    targets = report.conditions[0].targets if report.conditions else []
    for name in ("condition", "KL last", "KL last max", "KL all positions", "top-1 changed",
                 *(_target_name(t) for t in targets), "gained", "lost"):
        table.add_column(name, justify="left" if name in ("condition", "gained", "lost")
                         else "right")
    for c in report.conditions:
        cond = c.mode if c.strength is None else f"{c.mode} {c.strength:g}"
        table.add_row(cond, f"{c.kl_last:.4f}", f"{c.kl_last_max:.4f}", f"{c.kl_mean:.4f}",
                      f"{c.top1_changed:.0%}", *(f"{t.delta:+.3f}" for t in c.targets),
                      _tokens(c.gained), _tokens(c.lost))
    return table
