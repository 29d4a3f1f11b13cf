"""`latentguard eval` and `latentguard calibrate`: a rule pack measured on the user's texts, and
its single-signal thresholds set from benign ones (see lab/evaluation.py, lab/calibration.py)."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from latentguard.cli.common import EXIT_OK, CliError, Subparsers, console


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="HF model folder")
    p.add_argument("--sae", required=True, help="SAE folder (its layer, probes/ and rules.yaml)")
    p.add_argument("--rules", help="rule pack (default: rules.yaml beside the SAE)")
    p.add_argument("--probes", help="probe folder (default: probes/ beside the SAE)")
    p.add_argument("--layer", type=int, help="decoder layer (default: the SAE's)")
    p.add_argument("--as", dest="texts_as", choices=("prompt", "generation"), default="prompt",
                   help="feed the texts as prompt or as generated tokens (rule scopes apply)")
    p.add_argument("--max-tokens", type=int, default=256, help="tokens kept per text")
    p.add_argument("--batch", type=int, default=8, help="texts per model forward")
    p.add_argument("--cache", help="activation cache folder (default: "
                   "$XDG_CACHE_HOME/latentguard/activations)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the cache")
    p.add_argument("--quiet", action="store_true", help="no progress display")


def _signals(args: argparse.Namespace, texts: list[str], monitor: Any,
             make: Callable[[Any, Any, int], Any], prompts: list[str] | None = None
             ) -> list[Any]:
    """Each text's rows (cached; with ``prompts``, of the prompt and the text together) turned
    into ``make(monitor, rows, number of prompt rows)``, with progress."""
    from latentguard.lab.activations import TextEncoder
    from latentguard.lab.discovery import progress_bar
    from latentguard.lab.evalcache import default_cache_dir, encode_cached

    layer = monitor.sae.layer if args.layer is None else args.layer
    if layer != monitor.sae.layer:
        logging.getLogger(__name__).warning("layer %d given, the SAE reads layer %d", layer,
                                            monitor.sae.layer)
    encoder = TextEncoder.load(args.model, layer, max_tokens=args.max_tokens, batch=args.batch)
    cache = None if args.no_cache else Path(args.cache) if args.cache else default_cache_dir()
    with progress_bar(not args.quiet) as bar:
        task = bar.add_task("model", total=len(texts))
        prompts = prompts or [""] * len(texts)
        full = [p + t for p, t in zip(prompts, texts, strict=True)]
        rows = encode_cached(encoder, args.model, full, cache,
                             lambda n: bar.update(task, advance=n))
        task = bar.add_task("rules", total=len(texts))
        out = []
        for r, prompt in zip(rows, prompts, strict=True):
            out.append(make(monitor, r, len(encoder.token_ids(prompt)) if prompt else 0))
            bar.update(task, advance=1)
    return out


def _fmt(v: float | None, pct: bool = False) -> str:
    return "-" if v is None else f"{v:.1%}" if pct else f"{v:.3f}"


def eval_table(detectors: list[Any], n_pos: int, n_neg: int) -> Table:
    table = Table(title=f"{n_pos} positive, {n_neg} negative texts")
    for name in ("detector", "kind", "AUROC", "95% CI", "recall", "FPR", "recall@1%FPR",
                 "fires when"):
        table.add_column(name, justify="left" if name in ("detector", "fires when") else "right")
    for d in detectors:
        ci = f"{d.auroc_ci95[0]:.3f}-{d.auroc_ci95[1]:.3f}" if d.auroc_ci95 else "-"
        name = d.name + ("" if d.enabled else " (disabled)")
        if not d.evaluated:
            table.add_row(name, d.kind, "-", "-", "-", "-", "-", d.note)
            continue
        table.add_row(name, d.kind, _fmt(d.auroc), ci, _fmt(d.recall, True), _fmt(d.fpr, True),
                      _fmt(d.recall_at_1pct_fpr, True), d.threshold)
    return table


def _monitor(args: argparse.Namespace) -> Any:
    """The SAE, probes and pack of ``args``; refused when a rule was written for another
    SAE (its features would be measured in an SAE where they mean something else)."""
    from latentguard.lab.evaluation import load_monitor
    from latentguard.monitors.errors import SAEMismatchError

    monitor = load_monitor(args.sae, args.rules, args.probes)
    loaded = monitor.sae.identity
    for i, rule in enumerate(monitor.pack.rules):
        if rule.sae is not None and not rule.sae.same_sae(loaded):
            source = str(args.rules or Path(args.sae) / "rules.yaml")
            raise CliError(str(SAEMismatchError(f"rules[{i}].sae", rule.name,
                                                written_for=rule.sae, loaded=loaded,
                                                source=source)))
    return monitor


def run_eval(args: argparse.Namespace, out: Console) -> None:
    from latentguard.lab.evalplot import plot
    from latentguard.lab.evaluation import EvalReport, evaluate, read_labelled
    from latentguard.lab.evaluation import text_signals as make

    items = read_labelled(args.data)
    monitor = _monitor(args)
    signals = _signals(args, [i.text for i in items], monitor,
                       lambda m, r, n_prompt: make(m, r, args.texts_as, n_prompt),
                       [i.prompt for i in items])
    detectors = evaluate(monitor, items, signals, args.texts_as, bootstrap=args.bootstrap,
                         seed=args.seed)
    n_pos = sum(i.label for i in items)
    report = EvalReport(
        data=str(args.data), model=str(args.model), sae=str(args.sae),
        rules=str(args.rules or Path(args.sae) / "rules.yaml"),
        layer=monitor.sae.layer if args.layer is None else args.layer,
        texts_as=args.texts_as, n_pos=n_pos, n_neg=len(items) - n_pos,
        bootstrap=args.bootstrap, seed=args.seed, detectors=detectors)
    json_path = Path(args.out)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(report.model_dump_json(indent=2) + "\n", encoding="utf-8")
    scores: dict[str, list[float]] = {}
    for d in detectors:
        if d.evaluated:
            scores[f"{d.kind} {d.name}"] = [
                t.rule_scores[d.name] if d.kind == "rule" else t.probe_scores[d.name]
                for t in signals]
    png = Path(args.png) if args.png else json_path.with_suffix(".png")
    plot(png, scores, [i.label for i in items],
         {f"{d.kind} {d.name}": d.auroc for d in detectors})
    out.print(eval_table(detectors, n_pos, len(items) - n_pos))
    out.print(f"wrote {json_path} and {png}")


def run_calibrate(args: argparse.Namespace, out: Console) -> None:
    from latentguard.lab.calibration import calibrate, dump_pack
    from latentguard.lab.discovery import read_texts
    from latentguard.monitors.rules import bind_pack, rule_signals

    texts = read_texts(args.benign, limit=args.limit)
    monitor = _monitor(args)
    signals = _signals(args, texts, monitor,
                       lambda m, r, _: rule_signals(m.sae, m.engine, m.probes, r))
    pack, report = calibrate(monitor, signals, args.target_fpr, args.texts_as)
    pack = bind_pack(pack, monitor.sae.identity)  # its thresholds are this SAE's now
    header = (f"Thresholds of single-signal rules calibrated by `latentguard calibrate` to "
              f"FPR <= {args.target_fpr:g} on {len(texts)} benign texts "
              f"({', '.join(args.benign)}) fed as {args.texts_as}.")
    Path(args.out).write_text(dump_pack(pack, header), encoding="utf-8")
    report_path = Path(args.report) if args.report else Path(args.out).with_suffix(".json")
    report_path.write_text(report.model_dump_json(indent=2) + "\n", encoding="utf-8")
    table = Table(title=f"target FPR {args.target_fpr:g} on {len(texts)} benign texts")
    for name in ("rule", "threshold", "FPR before", "FPR after", "note"):
        table.add_column(name, justify="left" if name in ("rule", "note") else "right")
    for r in report.rules:
        if r.changed:
            table.add_row(r.rule, f"{r.old_threshold:g} -> {r.new_threshold:g}",
                          _fmt(r.fpr_before, True), _fmt(r.fpr_after, True), r.signal)
        else:
            table.add_row(r.rule, "unchanged", "-", "-", r.reason)
    out.print(table)
    out.print(f"wrote {args.out} and {report_path}")


def _run(fn: Callable[[argparse.Namespace, Console], None]) -> Callable[[argparse.Namespace],
                                                                            int]:
    def command(args: argparse.Namespace) -> int:
        from latentguard.lab.errors import LabError

        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        try:
            fn(args, console())
        except LabError as exc:
            raise CliError(str(exc)) from None
        return EXIT_OK
    return command


def register(sub: Subparsers) -> None:
    p = sub.add_parser("eval", help="AUROC, recall and FPR of every rule and probe of a pack on "
                       "labelled JSONL (text, label, group, prompt)")
    p.add_argument("data", help="JSONL: {\"text\": ..., \"label\": 0|1, \"group\": ..., "
                   "\"prompt\": ...}; group and prompt are optional")
    p.add_argument("--out", default="eval.json", help="JSON report (default: eval.json)")
    p.add_argument("--png", help="ROC and histogram plot (default: the JSON's name, .png)")
    p.add_argument("--bootstrap", type=int, default=1000,
                   help="resamplings for the AUROC confidence interval (0: none)")
    p.add_argument("--seed", type=int, default=0)
    _common(p)
    p.set_defaults(func=_run(run_eval))
    p = sub.add_parser("calibrate", help="set each single-signal rule's threshold at a target "
                       "FPR on benign texts; writes the updated pack")
    p.add_argument("benign", nargs="+", metavar="FILE_OR_DIR",
                   help="benign texts: files, folders, .txt lines, .jsonl")
    p.add_argument("--target-fpr", type=float, default=0.01)
    p.add_argument("--out", required=True, help="updated rule pack (YAML)")
    p.add_argument("--report", help="JSON report (default: the pack's name, .json)")
    p.add_argument("--limit", type=int, default=0, help="at most this many texts (0: all)")
    _common(p)
    p.set_defaults(func=_run(run_calibrate))
