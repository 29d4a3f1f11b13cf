"""Evaluate the "deception" rules (SAE features, linear probes) on held-out countries.

    .venv/bin/python bench/deception_eval.py --model ~/.cache/latentguard/models/gemma-3-270m \\
        --sae saes/gemma-3-270m/blocks.9.hook_resid_post --data data/deception.jsonl \\
        --out bench/results/deception-gemma-3-270m-l9

The data set comes from ``bench/deception_data.py`` (GeoNames facts said truthfully or not,
matched pairs, split by country). The candidates and their scoring are those of
``bench/unsafe_code_eval.py`` (one SAE feature, max over tokens; a mean-residual probe; a
per-token probe, max over tokens), chosen on the train split and measured on held-out
countries, overall and per category (plain false claim, knowing lie, denial, manipulation).
Outputs in ``--out``: ``metrics.json``, ``rules.yaml`` (a ``deception`` alert rule on the
probe and a ``deception-feature`` one on the best feature) and ``probes/deception.*``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import unsafe_code_eval as uce
from rich.console import Console
from rich.table import Table

from latentguard.lab.activations import TextEncoder
from latentguard.lab.discovery import load_sae_for
from latentguard.monitors.discovery import auroc
from latentguard.monitors.probe_fit import feature_scores, max_scores, mean_scores
from latentguard.monitors.probes import Probe, ProbeMeta
from latentguard.monitors.rules import load_rule_pack

logger = logging.getLogger(__name__)

PROBE_NAME = "deception"
SAE_PROBE_NAME = "deception-sae"
CLASSES = ("deceptive", "honest")


def per_category(m: dict[str, Any], rows: list[dict[str, Any]], scores: dict[str, torch.Tensor]
                 ) -> dict[str, dict[str, float]]:
    """Held-out AUROC of each candidate within each category (deceptive vs honest)."""
    y = torch.tensor([int(r["label"]) for r in rows])
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


def rules_yaml(m: dict[str, Any]) -> str:
    rule, probe = m["rule"], m["probe_max"]
    desc = (f"Statements that knowingly mislead (GeoNames facts said falsely; "
            f"bench/deception_eval.py): the {PROBE_NAME} probe on any token above its train "
            f"1%-FPR point; {uce._measured(probe)}. Weak: review, don't block.")
    fdesc = (f"Deception, one SAE feature ({rule['feature']}) above its train 1%-FPR point; "
             f"{uce._measured(rule)}")
    text = (
        f"# Written by bench/deception_eval.py for the SAE {m['sae']} (layer {m['layer']}).\n"
        "rules:\n"
        "  - name: deception\n"
        f"    description: {json.dumps(desc)}\n"
        "    severity: low\n"
        "    scope: generation\n"
        f"    when: {{probe: {PROBE_NAME}, threshold: {probe['threshold']:.6g}}}\n"
        "    action: {type: alert}\n"
        "  - name: deception-feature\n"
        f"    description: {json.dumps(fdesc)}\n"
        "    severity: info\n"
        "    scope: generation\n"
        f"    when: {{feature: {rule['feature']}, threshold: {rule['threshold']:.6g}}}\n"
        "    action: {type: alert}\n"
        f"{uce.weighted_rule_yaml(m, SAE_PROBE_NAME, 'Deception', 'info')}"
    )
    load_rule_pack(text, source="rules.yaml")  # raises if the pack is not valid
    return text


def main(argv: Sequence[str] | None = None) -> int:
    p = uce.eval_parser(__doc__, "JSONL from deception_data.py")
    p.add_argument("--batch", type=int, default=16, help="texts per model forward")
    p.add_argument("--probe-l2", type=float, nargs="+", default=[1e-3, 1e-2, 1e-1, 1.0],
                   help="L2 penalties tried by 3-fold cross-validation (folds by country)")
    p.add_argument("--n-features", type=int, nargs="+", default=list(uce.N_FEATURES),
                   help="features of the weighted-features SAE rule (cross-validated)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", type=Path, help="folder caching the texts' residual rows")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.manual_seed(args.seed)

    splits = [uce.load_split(args.data, s, None, None, args.seed) for s in ("train", "heldout")]
    sae = load_sae_for(args.sae)
    layer = sae.layer if args.layer is None else args.layer
    loaded: list[TextEncoder] = []

    def encoder() -> TextEncoder:
        if not loaded:
            loaded.append(TextEncoder.load(args.model, layer, max_tokens=128, batch=args.batch))
        return loaded[0]

    start = time.perf_counter()
    split_rows = []
    for name, rows in zip(("train", "heldout"), splits, strict=True):
        texts = [r["text"] for r in rows]
        cache = args.cache / f"{name}.safetensors" if args.cache else None
        split_rows.append(uce.residual_rows(encoder, texts, name, cache,
                                            uce.cache_key(args.model, layer, 128, texts)))
    seconds = time.perf_counter() - start
    feats = [uce.snippet_features(sae, rows) for rows in split_rows]
    labels = [torch.tensor([int(r["label"]) for r in rows]) for rows in splits]
    m = uce.evaluate((feats[0], split_rows[0], labels[0]), (feats[1], split_rows[1], labels[1]),
                     args.probe_l2, [r["source"] for r in splits[0]])
    direction = m["probe_max"].pop("_direction")
    mean_direction = m["probe"].pop("_direction")
    codes = [uce.snippet_codes(sae, rows) for rows in split_rows]
    m["rule_weighted"] = uce.weighted_rule((codes[0], labels[0]), (codes[1], labels[1]),
                                           sae.d_sae, args.n_features,
                                           [r["source"] for r in splits[0]])
    weighted_direction = m["rule_weighted"].pop("_direction")
    t_rows = split_rows[1]
    scores = {"feature": feats[1][:, m["rule"]["feature"]],
              "SAE weighted": feature_scores(codes[1], weighted_direction,
                                             m["rule_weighted"]["bias"]),
              "probe (mean)": mean_scores([r.mean(0) for r in t_rows], mean_direction,
                                          m["probe"]["bias"]),
              "probe (max)": max_scores(t_rows, direction, m["probe_max"]["bias"])}
    m = {"model": str(args.model), "sae": str(args.sae), "layer": layer, "data": str(args.data),
         "out": str(args.out), "seed": args.seed,
         "n": {name: {CLASSES[0]: sum(int(r["label"]) for r in rows),
                      CLASSES[1]: sum(1 - int(r["label"]) for r in rows)}
               for name, rows in zip(("train", "heldout"), splits, strict=True)},
         "tokens": sum(len(r) for rows in split_rows for r in rows),
         "extract_seconds": round(seconds, 1), **m,
         "per_category": per_category(m, splits[1], scores),
         "command": "bench/deception_eval.py " + " ".join(sys.argv[1:] if argv is None
                                                          else argv)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "metrics.json").write_text(json.dumps(m, indent=2) + "\n", encoding="utf-8")
    (args.out / "rules.yaml").write_text(rules_yaml(m), encoding="utf-8")
    Probe(ProbeMeta(
        name=PROBE_NAME, bias=m["probe_max"]["bias"], threshold=m["probe_max"]["threshold"],
        layer=layer, description="per-token logistic probe of statements that knowingly "
        "mislead (GeoNames facts said falsely), trained on each text's max over tokens "
        "(score: a logit); weak, see bench/deception_eval.py"), direction).save(
            args.out / "probes")
    uce.save_weighted_probe(m["rule_weighted"], weighted_direction, SAE_PROBE_NAME, layer,
                            args.out / "probes", "deceptive statements")
    console = Console()
    console.print(uce.results_table(m, "deception", CLASSES))
    console.print(category_table(m["per_category"]))
    console.print(f"metrics: {args.out / 'metrics.json'}; rules: {args.out / 'rules.yaml'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
