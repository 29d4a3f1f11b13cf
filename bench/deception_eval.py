"""Evaluate the "deception" rules (SAE features, linear probes) on held-out countries.

    .venv/bin/python -m bench.deception_eval --model ~/.cache/latentguard/models/gemma-3-270m \\
        --sae saes/gemma-3-270m/blocks.9.hook_resid_post --data data/deception.jsonl \\
        --out bench/results/deception-gemma-3-270m-l9

The data set comes from ``bench.deception_data`` (GeoNames facts said truthfully or not,
matched pairs, split by country). The candidates and their scoring are those of
``bench.unsafe_code_eval`` (one SAE feature, max over tokens; a mean-residual probe; a
per-token probe, max over tokens), chosen on the train split and measured on held-out
countries, overall and per category (plain false claim, knowing lie, denial, manipulation).
Outputs in ``--out``: ``metrics.json``, ``rules.yaml`` (a ``deception`` alert rule on the
probe and a ``deception-feature`` one on the best feature) and ``probes/deception.*``.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from bench import unsafe_code_eval as uce
from bench.common import (
    Row,
    class_counts,
    command_line,
    eval_parser,
    labels,
    load_split,
    split_residuals,
    write_results,
)
from latentguard.lab.discovery import load_sae_for
from latentguard.monitors.discovery import auroc
from latentguard.monitors.probe_fit import feature_scores, max_scores, mean_scores
from latentguard.monitors.rules import load_rule_pack

logger = logging.getLogger(__name__)

PROBE_NAME = "deception"
SAE_PROBE_NAME = "deception-sae"
CLASSES = ("deceptive", "honest")
#: Tokens kept per text: every template's sentence fits.
MAX_TOKENS = 128


@dataclass
class DeceptionResults:
    """``metrics.json``: the run's settings, the candidates' metrics, then per category."""

    model: str
    sae: str
    layer: int
    data: str
    out: str
    seed: int
    n: dict[str, dict[str, int]]
    tokens: int
    extract_seconds: float
    rule: uce.FeatureRule
    top_features: list[uce.TopFeature]
    probe: uce.ProbeMetrics
    probe_max: uce.ProbeMetrics
    rule_weighted: uce.WeightedRule
    per_category: dict[str, dict[str, float]]
    """Held-out AUROC of each candidate within each category."""
    command: str


def per_category(rows: Sequence[Row], scores: dict[str, torch.Tensor]
                 ) -> dict[str, dict[str, float]]:
    """Held-out AUROC of each candidate within each category (deceptive vs honest)."""
    y = labels(rows)
    out: dict[str, dict[str, float]] = {}
    for category in sorted({r["category"] for r in rows}):
        mask = torch.tensor([r["category"] == category for r in rows])
        out[category] = {name: float(auroc(s[mask & (y == 1)], s[mask & (y == 0)]))
                         for name, s in scores.items()}
    return out


def category_table(per: dict[str, dict[str, float]]) -> Table:
    table = Table(title="held-out AUROC per category")
    names = next(iter(per.values())).keys() if per else []
    table.add_column("category")
    for name in names:
        table.add_column(name, justify="right")
    for category, row in per.items():
        table.add_row(category, *(f"{v:.3f}" for v in row.values()))
    return table


def rules_yaml(m: DeceptionResults) -> str:
    rule, probe = m.rule, m.probe_max
    desc = (f"Statements that knowingly mislead (GeoNames facts said falsely; "
            f"bench/deception_eval.py): the {PROBE_NAME} probe on any token above its train "
            f"1%-FPR point; {uce.measured(probe)}. Weak: review, don't block.")
    fdesc = (f"Deception, one SAE feature ({rule.feature}) above its train 1%-FPR point; "
             f"{uce.measured(rule)}")
    text = (
        f"# Written by bench/deception_eval.py for the SAE {m.sae} (layer {m.layer}).\n"
        "rules:\n"
        "  - name: deception\n"
        f"    description: {json.dumps(desc)}\n"
        "    severity: low\n"
        "    scope: generation\n"
        f"    when: {{probe: {PROBE_NAME}, threshold: {probe.threshold:.6g}}}\n"
        "    action: {type: alert}\n"
        "  - name: deception-feature\n"
        f"    description: {json.dumps(fdesc)}\n"
        "    severity: info\n"
        "    scope: generation\n"
        f"    when: {{feature: {rule.feature}, threshold: {rule.threshold:.6g}}}\n"
        "    action: {type: alert}\n"
        f"{uce.weighted_rule_yaml(m.rule_weighted, SAE_PROBE_NAME, 'Deception', 'info')}"
    )
    load_rule_pack(text, source="rules.yaml")  # raises if the pack is not valid
    return text


def main(argv: Sequence[str] | None = None) -> int:
    p = eval_parser(__doc__, "JSONL from bench.deception_data")
    p.add_argument("--batch", type=int, default=16, help="texts per model forward")
    p.add_argument("--probe-l2", type=float, nargs="+", default=[1e-3, 1e-2, 1e-1, 1.0],
                   help="L2 penalties tried by 3-fold cross-validation (folds by country)")
    p.add_argument("--n-features", type=int, nargs="+", default=list(uce.N_FEATURES),
                   help="features of the weighted-features SAE rule (cross-validated)")
    p.add_argument("--cache", type=Path, help="folder caching the texts' residual rows")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.manual_seed(args.seed)

    train_rows, test_rows = (load_split(args.data, s, None, None, args.seed)
                             for s in ("train", "heldout"))
    sae = load_sae_for(args.sae)
    layer = sae.layer if args.layer is None else args.layer
    res = split_residuals(args.model, layer, {"train": [r["text"] for r in train_rows],
                                              "heldout": [r["text"] for r in test_rows]},
                          max_tokens=MAX_TOKENS, batch=args.batch, cache=args.cache)
    rows, t_rows = res.rows["train"], res.rows["heldout"]
    feats, t_feats = uce.snippet_features(sae, rows), uce.snippet_features(sae, t_rows)
    y, t_y = labels(train_rows), labels(test_rows)
    sources = [r["source"] for r in train_rows]
    cands = uce.evaluate((feats, rows, y), (t_feats, t_rows, t_y), args.probe_l2, sources)
    t_codes = uce.snippet_codes(sae, t_rows)
    weighted = uce.weighted_rule((uce.snippet_codes(sae, rows), y), (t_codes, t_y), sae.d_sae,
                                 args.n_features, sources)
    scores = {"feature": t_feats[:, cands.rule.feature],
              "SAE weighted": feature_scores(t_codes, weighted.direction,
                                             weighted.metrics.bias),
              "probe (mean)": mean_scores([r.mean(0) for r in t_rows], cands.probe.direction,
                                          cands.probe.metrics.bias),
              "probe (max)": max_scores(t_rows, cands.probe_max.direction,
                                        cands.probe_max.metrics.bias)}
    m = DeceptionResults(
        model=str(args.model), sae=str(args.sae), layer=layer, data=str(args.data),
        out=str(args.out), seed=args.seed,
        n=class_counts({"train": train_rows, "heldout": test_rows}, CLASSES),
        tokens=res.tokens, extract_seconds=round(res.seconds, 1), rule=cands.rule,
        top_features=cands.top_features, probe=cands.probe.metrics,
        probe_max=cands.probe_max.metrics, rule_weighted=weighted.metrics,
        per_category=per_category(test_rows, scores),
        command=command_line("bench.deception_eval", argv))
    write_results(args.out / "metrics.json", m)
    (args.out / "rules.yaml").write_text(rules_yaml(m), encoding="utf-8")
    uce.save_probe(cands.probe_max, PROBE_NAME, layer, args.out / "probes", "per-token "
                   "logistic probe of statements that knowingly mislead (GeoNames facts said "
                   "falsely), trained on each text's max over tokens (score: a logit); weak, "
                   "see bench/deception_eval.py")
    uce.save_weighted_probe(weighted, SAE_PROBE_NAME, layer, args.out / "probes",
                            "deceptive statements")
    console = Console()
    console.print(uce.results_table(m.n, m.rule, m.probe, m.probe_max,
                                    rule_weighted=m.rule_weighted, what="deception",
                                    classes=CLASSES))
    console.print(category_table(m.per_category))
    console.print(f"metrics: {args.out / 'metrics.json'}; rules: {args.out / 'rules.yaml'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
