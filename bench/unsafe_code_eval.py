"""Evaluate the "unsafe code" rules (SAE features, linear probes) on held-out snippets.

    .venv/bin/python bench/unsafe_code_eval.py --model ~/.cache/latentguard/models/gemma-3-270m \
        --sae saes/gemma-3-270m/blocks.9.hook_resid_post --layer 9 \
        --data data/unsafe_code.jsonl --out bench/results/unsafe-code

The data set comes from ``bench/unsafe_code_data.py`` (stdlib functions labelled by bandit, split
by source file). Each snippet goes through the model, cut after ``--layer``, with a BOS in front
(its row left out) and at most ``--max-tokens`` tokens. Each candidate is scored per snippet
exactly as a rule would see it:

- one SAE feature: the **max over tokens** (a rule ``{feature: F, threshold: T}``, no window,
  fires on any token above ``T``); the best one on the train split is the feature rule, and an
  ``any`` rule ORs the best feature of each bandit test;
- a linear probe of the **mean residual** (a rule ``{probe: P, window: {agg: mean}}``);
- a per-token linear probe, **max over tokens** (a rule ``{probe: P, threshold: T}``), trained
  through a smooth maximum (``latentguard.monitors.probe_fit``): the shipped ``unsafe-code``
  probe;
- the SAE rule over **weighted features**: the same max-over-tokens probe, but on the SAE's
  feature activations, at most ``--n-features`` of them (a features probe,
  ``unsafe-code-sae``; the count chosen by cross-validation on the train split).

Thresholds sit at the train negatives' 1%-FPR point; probe penalties are chosen by
cross-validation on the train split (folds by source file). On the held-out split each gets
AUROC, recall at 1% FPR (threshold set on the held-out negatives) and the recall and FPR of the
threshold chosen on train (what a deployed rule would do). Outputs in ``--out``:
``metrics.json``, ``rules.yaml`` (or ``--rules-out``), the probe
(``probes/unsafe-code.{json,safetensors}``, or ``--probe-out``) and catalog entries for the
chosen features (``features.json``, to merge into the SAE's catalog).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from latentguard.lab.activations import TextEncoder
from latentguard.lab.discovery import load_catalog, load_sae_for, progress_bar
from latentguard.monitors.discovery import auroc, recall_at_fpr, threshold_at_fpr
from latentguard.monitors.probe_fit import (
    Codes,
    choose_by_cv,
    feature_scores,
    fit_feature_probe,
    fit_max_probe,
    fit_mean_probe,
    max_scores,
    mean_scores,
    screen_features,
)
from latentguard.monitors.probes import Probe, ProbeMeta, nonzero_weights
from latentguard.monitors.rules import load_rule_pack

logger = logging.getLogger(__name__)

FPR = 0.01
PROBE_NAME = "unsafe-code"
SAE_PROBE_NAME = "unsafe-code-sae"
N_FEATURES = (16, 32, 64, 128)


# ---- data -----------------------------------------------------------------------------------

def read_rows(path: Path) -> list[dict[str, Any]]:
    """Every record of a JSONL data set."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip()]


def load_split(path: Path, split: str, max_pos: int | None, max_neg: int | None,
               seed: int) -> list[dict[str, Any]]:
    """The split's snippets: up to ``max_pos`` unsafe and ``max_neg`` clean (seeded sample)."""
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


def cache_key(model: str, layer: int, max_tokens: int, texts: Sequence[str]) -> str:
    blob = json.dumps([str(Path(model).resolve()), layer, max_tokens, list(texts)])
    return hashlib.sha256(blob.encode()).hexdigest()


@torch.no_grad()
def residual_rows(encoder: Callable[[], TextEncoder], texts: Sequence[str], what: str,
                  cache: Path | None = None, key: str = "") -> list[Tensor]:
    """Each snippet's residual rows ``[T, d_model]``, from ``cache`` when it holds ``key``.

    The cache (safetensors: all rows and the lengths) depends on the model, layer, token limit
    and texts only, so the rule can be re-chosen with another SAE without running the model.
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


@torch.no_grad()
def snippet_features(sae: Any, rows: Sequence[Tensor]) -> Tensor:
    """Per-snippet max of every SAE feature ``[n, d_sae]``."""
    return torch.stack([sae.encode(r).amax(0) for r in rows]).clone()


@torch.no_grad()
def snippet_codes(sae: Any, rows: Sequence[Tensor]) -> list[Codes]:
    """Each snippet's sparse SAE code: per token the ``k`` largest activations (a TopK SAE's
    own ``k``: its whole code; 64 for other architectures)."""
    k = min(int(getattr(sae, "k", 64) or 64), sae.d_sae)
    return [Codes(*(t.clone() for t in sae.topk(r, k))) for r in rows]


# ---- metrics --------------------------------------------------------------------------------

def heldout_metrics(pos: Tensor, neg: Tensor, train_threshold: float) -> dict[str, float]:
    recall, t = recall_at_fpr(pos, neg, FPR)
    return {"auroc": float(auroc(pos, neg)), "recall_at_1pct_fpr": recall,
            "threshold_at_1pct_fpr": t,
            "recall_at_train_threshold": float((pos > train_threshold).double().mean()),
            "fpr_at_train_threshold": float((neg > train_threshold).double().mean())}


def evaluate(train: tuple[Tensor, list[Tensor], Tensor],
             test: tuple[Tensor, list[Tensor], Tensor],
             l2: float | Sequence[float], groups: Sequence[str] = ()) -> dict[str, Any]:
    """Rule and probes chosen on ``train`` (per-snippet feature maxima, residual rows, labels),
    measured on ``test``."""
    feats, rows, y = train
    t_feats, t_rows, t_y = test
    pos, neg, t_pos, t_neg = y == 1, y == 0, t_y == 1, t_y == 0
    scores = auroc(feats[pos], feats[neg])
    best = int(scores.argmax())
    rule_t = threshold_at_fpr(feats[neg, best], FPR)
    top = scores.argsort(descending=True)[:10]
    top_heldout = auroc(t_feats[t_pos][:, top], t_feats[t_neg][:, top])
    means, t_means = [r.mean(0) for r in rows], [r.mean(0) for r in t_rows]
    out: dict[str, Any] = {
        "rule": {"feature": best, "train_auroc": float(scores[best]), "threshold": rule_t,
                 "train_recall_at_threshold": float((feats[pos, best] > rule_t).double().mean()),
                 "heldout": heldout_metrics(t_feats[t_pos, best], t_feats[t_neg, best], rule_t)},
        "top_features": [{"feature": int(f), "train_auroc": float(scores[f]),
                          "heldout_auroc": float(h)} for f, h in zip(top, top_heldout,
                                                                     strict=True)],
    }
    for key, fit, score, x, t_x in (("probe", fit_mean_probe, mean_scores, means, t_means),
                                    ("probe_max", fit_max_probe, max_scores, rows, t_rows)):
        cv: dict[str, float | None] = {}
        penalty = l2
        if not isinstance(penalty, float | int):
            penalty, cv = choose_by_cv(fit, score, x, y, groups, penalty)
        direction, bias = fit(x, y, penalty)
        s_train, s_test = score(x, direction, bias), score(t_x, direction, bias)
        t = threshold_at_fpr(s_train[neg], FPR)
        out[key] = {"train_auroc": float(auroc(s_train[pos], s_train[neg])), "threshold": t,
                    "bias": bias, "l2": penalty, "l2_cv_auroc": cv,
                    "train_recall_at_threshold": float((s_train[pos] > t).double().mean()),
                    "heldout": heldout_metrics(s_test[t_pos], s_test[t_neg], t),
                    "_direction": direction}
    return out


def weighted_rule(train: tuple[list[Codes], Tensor], test: tuple[list[Codes], Tensor],
                  d_sae: int, n_features: Sequence[int], groups: Sequence[str],
                  l2: float = 1e-2) -> dict[str, Any]:
    """The SAE rule over weighted features (a features probe, max over tokens), its number of
    features chosen by cross-validation on the train split when several are given."""
    codes, y = train
    t_codes, t_y = test
    screened: dict[tuple[int, ...], Tensor] = {}
    cv: dict[str, float | None] = {}
    n = float(n_features[0])
    with progress_bar() as bar:
        # 3 folds and the final fit; one screening per fold serves every n.
        task = bar.add_task("screening SAE features", total=4 if len(n_features) > 1 else 1)

        def fit(c: Sequence[Codes], yy: Tensor, n: float) -> tuple[Tensor, float]:
            key = tuple(id(x) for x in c)
            if key not in screened:
                screened[key] = screen_features(c, yy, d_sae)
                bar.update(task, advance=1)
            return fit_feature_probe(c, yy, d_sae, int(n), l2, screened=screened[key])

        if len(n_features) > 1:
            n, cv = choose_by_cv(fit, feature_scores, codes, y, groups,
                                 [float(v) for v in n_features])
        direction, bias = fit(codes, y, n)
    s_train, s_test = feature_scores(codes, direction, bias), feature_scores(t_codes, direction,
                                                                             bias)
    t = threshold_at_fpr(s_train[y == 0], FPR)
    return {"n_features": int(n), "n_features_cv_auroc": cv, "l2": l2, "bias": bias,
            "threshold": t, "train_auroc": float(auroc(s_train[y == 1], s_train[y == 0])),
            "train_recall_at_threshold": float((s_train[y == 1] > t).double().mean()),
            "heldout": heldout_metrics(s_test[t_y == 1], s_test[t_y == 0], t),
            "weights": [{"feature": f, "weight": w} for f, w in nonzero_weights(direction)],
            "_direction": direction}


def save_weighted_probe(rule: dict[str, Any], direction: Tensor, name: str, layer: int,
                        folder: Path, what: str) -> None:
    """The weighted-features rule as a features probe ``name`` in ``folder``."""
    Probe(ProbeMeta(
        name=name, bias=rule["bias"], threshold=rule["threshold"], layer=layer, input="features",
        description=f"SAE rule: per token, a weighted sum of {len(rule['weights'])} SAE "
        f"features of {what}, trained on each text's max over tokens (score: a logit); use it "
        "without a window"), direction).save(folder)


def results_table(m: dict[str, Any], what: str = "unsafe code",
                  classes: tuple[str, str] = ("unsafe", "clean")) -> Table:
    rule, probe, probe_max = m["rule"], m["probe"], m["probe_max"]
    n, (one, zero) = m["n"], classes
    table = Table(title=f"{what}, held out: {n['heldout'][one]} {one} / "
                  f"{n['heldout'][zero]} {zero} (train {n['train'][one]} / "
                  f"{n['train'][zero]})")
    table.add_column("metric")
    table.add_column(f"SAE rule (feature {rule['feature']})", justify="right")
    cols = [rule, probe]
    if m.get("rule_any"):
        table.add_column(f"SAE rule: any of {len(m['rule_any']['features'])} features",
                         justify="right")
        cols.append(m["rule_any"])
    if m.get("rule_weighted"):
        table.add_column(f"SAE rule: {len(m['rule_weighted']['weights'])} weighted features",
                         justify="right")
        cols.append(m["rule_weighted"])
    table.add_column("linear probe (mean residual)", justify="right")
    table.add_column("linear probe (max over tokens)", justify="right")
    cols = [rule, *cols[2:], probe, probe_max]
    rows = [("AUROC (held out)", "auroc", "{:.3f}"),
            ("recall at 1% FPR (held out)", "recall_at_1pct_fpr", "{:.1%}"),
            ("recall at the train threshold", "recall_at_train_threshold", "{:.1%}"),
            ("FPR at the train threshold", "fpr_at_train_threshold", "{:.1%}")]
    table.add_row("AUROC (train)", *(f"{c['train_auroc']:.3f}" for c in cols))
    for name, key, fmt in rows:
        table.add_row(name, *(fmt.format(c["heldout"][key]) for c in cols))
    return table


def any_rule(train: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor],
             features: Sequence[int]) -> dict[str, Any] | None:
    """An ``any`` rule over ``features`` (each bandit test's best one), set on the train split.

    Every feature gets its threshold at the same rank ``k`` among the train negatives (sorted
    descending); the largest ``k`` whose OR keeps the train FPR at 1% or below is used. For AUROC
    the snippet's score is the largest over features of ``-log`` of the share of train negatives
    at or above its activation (how unusual it is for clean code; ties broken by the activation).
    """
    feats, y = train
    t_feats, t_y = test
    idx = sorted(set(features))
    if not idx:
        return None
    neg = feats[y == 0][:, idx].double()
    ranked = neg.sort(dim=0, descending=True).values
    best_k, best_t = 0, ranked[0]
    for k in range(int(FPR * len(neg) + 1e-9) + 1):
        t = ranked[k]
        if float((neg > t).any(1).double().mean()) <= FPR:
            best_k, best_t = k, t
    asc = neg.sort(dim=0).values

    def score(x: Tensor) -> Tensor:
        x = x[:, idx].double()
        ge = len(neg) - torch.searchsorted(asc.T.contiguous(), x.T.contiguous(), side="left").T
        # Ties (e.g. everything above the largest train negative) broken by the activation.
        tie = 1e-6 * torch.tanh(x / ranked[0].clamp_min(1e-6))
        return (-torch.log((ge + 0.5) / (len(neg) + 1)) + tie).amax(1)

    def fires(x: Tensor) -> Tensor:
        return (x[:, idx].double() > best_t).any(1)

    tr_s, te_s = score(feats), score(t_feats)
    held = heldout_metrics(te_s[t_y == 1], te_s[t_y == 0], float("inf"))
    held["recall_at_train_threshold"] = float(fires(t_feats[t_y == 1]).double().mean())
    held["fpr_at_train_threshold"] = float(fires(t_feats[t_y == 0]).double().mean())
    return {"features": [{"feature": f, "threshold": float(t)} for f, t in zip(idx, best_t,
                                                                                   strict=True)],
            "rank": best_k, "train_auroc": float(auroc(tr_s[y == 1], tr_s[y == 0])),
            "train_recall_at_threshold": float(fires(feats[y == 1]).double().mean()),
            "train_fpr_at_threshold": float(fires(feats[y == 0]).double().mean()),
            "heldout": held}


def bandit_name(test_id: str) -> str:
    """bandit's own short name of a test (``B301`` -> ``pickle``), or the id."""
    try:
        from bandit.core.extension_loader import MANAGER
    except ImportError:
        return test_id
    if test_id in MANAGER.blacklist_by_id:
        return str(MANAGER.blacklist_by_id[test_id]["name"])
    plugin = MANAGER.plugins_by_id.get(test_id)
    return str(plugin.name) if plugin is not None else test_id


def per_test_features(train: tuple[Tensor, Tensor, list[list[str]]],
                      test: tuple[Tensor, Tensor, list[list[str]]],
                      min_train: int = 10) -> list[dict[str, Any]]:
    """For each bandit test flagged in ``min_train`` train snippets: the feature best separating
    those snippets from the clean ones (train AUROC), with its held-out AUROC when the held-out
    split has at least 3 such snippets."""
    feats, y, flagged = train
    t_feats, t_y, t_flagged = test
    ids = sorted({t for f in flagged for t in f})
    out = []
    for test_id in ids:
        has = torch.tensor([test_id in f for f in flagged])
        if int(has.sum()) < min_train:
            continue
        scores = auroc(feats[has], feats[y == 0])
        best = int(scores.argmax())
        t_has = torch.tensor([test_id in f for f in t_flagged])
        heldout = (float(auroc(t_feats[t_has, best], t_feats[t_y == 0, best]))
                   if int(t_has.sum()) >= 3 else None)
        out.append({"test": test_id, "name": bandit_name(test_id), "feature": best,
                    "train_snippets": int(has.sum()), "heldout_snippets": int(t_has.sum()),
                    "train_auroc": float(scores[best]), "heldout_auroc": heldout})
    return out


def catalog_entries(m: dict[str, Any], label: str) -> list[dict[str, Any]]:
    """Catalog entries for the rule's feature and each bandit test's best feature (merged)."""
    rule = m["rule"]
    entries: dict[int, dict[str, Any]] = {rule["feature"]: {
        "index": rule["feature"], "label": "unsafe Python code (bandit)",
        "tags": ["unsafe-code", "security", "code"], "description": (
            f"Best single feature (train AUROC {rule['train_auroc']:.3f}) separating Python "
            f"functions that bandit flags from clean ones; held-out AUROC "
            f"{rule['heldout']['auroc']:.3f} (bench/unsafe_code_eval.py). {label}").strip()}}
    for t in m["per_test"]:
        held = f", held-out {t['heldout_auroc']:.3f}" if t["heldout_auroc"] is not None else ""
        line = (f"bandit {t['test']} {t['name']}: AUROC {t['train_auroc']:.3f} on "
                f"{t['train_snippets']} train snippets vs clean{held}")
        e = entries.setdefault(t["feature"], {"index": t["feature"], "label": "", "tags": [
            "security", "code"], "description": ""})
        e["label"] = (e["label"] + "; " if e["label"] else "") + f"{t['name']} ({t['test']})"
        e["tags"] = [*e["tags"], t["test"]]
        e["description"] = (e["description"] + "\n" if e["description"] else "") + line
    return [entries[i] for i in sorted(entries)]


def per_test_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="best single feature per bandit test (vs clean snippets)")
    for name in ("test", "name", "feature", "train snippets", "train AUROC", "held-out snippets",
                 "held-out AUROC"):
        table.add_column(name, justify="left" if name in ("test", "name") else "right")
    for t in rows:
        held = "-" if t["heldout_auroc"] is None else f"{t['heldout_auroc']:.3f}"
        table.add_row(t["test"], t["name"], str(t["feature"]), str(t["train_snippets"]),
                      f"{t['train_auroc']:.3f}", str(t["heldout_snippets"]), held)
    return table


# ---- outputs --------------------------------------------------------------------------------

def any_rule_yaml(m: dict[str, Any]) -> str:
    rule = m.get("rule_any")
    if not rule:
        return ""
    names: dict[int, list[str]] = {}
    for t in m["per_test"]:
        names.setdefault(t["feature"], []).append(f"{t['test']} {t['name']}")
    desc = (f"Python that bandit flags: any of {len(rule['features'])} SAE features, each the "
            f"best on the train split for one bandit test, thresholds at a shared rank of the "
            f"train negatives (train FPR {rule['train_fpr_at_threshold']:.1%}); "
            f"{_measured(rule)}")
    lines = ["  - name: unsafe-code-any", f"    description: {json.dumps(desc)}",
             "    severity: medium", "    scope: generation", "    when:", "      any:"]
    for f in rule["features"]:
        note = f"  # {', '.join(names[f['feature']])}" if f["feature"] in names else ""
        lines.append(f"        - {{feature: {f['feature']}, threshold: {f['threshold']:.6g}}}"
                     f"{note}")
    lines.append("    action: {type: alert}")
    return "\n".join(lines) + "\n"


def weighted_rule_yaml(m: dict[str, Any], name: str, what: str, severity: str) -> str:
    """The weighted-features SAE rule (``{probe: name}``, a features probe), an alert."""
    rule = m.get("rule_weighted")
    if not rule:
        return ""
    top = ", ".join(f"{w['feature']} ({w['weight']:+.3g})" for w in rule["weights"][:5])
    desc = (f"{what}: the {name} features probe, a weighted sum of {len(rule['weights'])} SAE "
            f"features (largest weights: {top}; all in probes/{name}.safetensors) on any token "
            f"above its 1%-FPR point on the train split; {_measured(rule)}")
    return (f"  - name: {name}\n    description: {json.dumps(desc)}\n"
            f"    severity: {severity}\n    scope: generation\n"
            f"    when: {{probe: {name}, threshold: {rule['threshold']:.6g}}}\n"
            "    action: {type: alert}\n")


def _measured(m: dict[str, Any]) -> str:
    held = m["heldout"]
    return (f"held-out AUROC {held['auroc']:.3f}, recall {held['recall_at_train_threshold']:.1%}"
            f" at FPR {held['fpr_at_train_threshold']:.1%} (train 1%-FPR threshold)")


def rules_yaml(m: dict[str, Any], label: str) -> str:
    rule, probe = m["rule"], m["probe_max"]
    about = f" ({label})" if label else ""
    probe_desc = (f"Python that bandit flags (medium severity or above): the {PROBE_NAME} "
                  f"linear probe on any token above its 1%-FPR point on the train split; "
                  f"{_measured(probe)}")
    desc = (f"Python that bandit flags: SAE feature {rule['feature']}{about} above its "
            f"1%-FPR point on the train split; {_measured(rule)}")
    text = (
        f"# Written by bench/unsafe_code_eval.py for the SAE {m['sae']} (layer {m['layer']});\n"
        f"# feature indices mean nothing with another SAE. Metrics: {m['out']}/metrics.json.\n"
        "rules:\n"
        "  - name: unsafe-code\n"
        f"    description: {json.dumps(probe_desc)}\n"
        "    severity: high\n"
        "    scope: generation\n"
        f"    when: {{probe: {PROBE_NAME}, threshold: {probe['threshold']:.6g}}}\n"
        "    action: {type: block}\n"
        "  - name: unsafe-code-feature\n"
        f"    description: {json.dumps(desc)}\n"
        "    severity: medium\n"
        "    scope: generation\n"
        f"    when: {{feature: {rule['feature']}, threshold: {rule['threshold']:.6g}}}\n"
        "    action: {type: alert}\n"
        f"{any_rule_yaml(m)}"
        f"{weighted_rule_yaml(m, SAE_PROBE_NAME, 'Python that bandit flags', 'high')}"
        "policies:\n"
        "  - name: default\n"
        "    rules: [\"*\"]\n"
    )
    load_rule_pack(text, source="rules.yaml")  # raises if the pack is not valid
    return text


def eval_parser(doc: str, data_help: str) -> argparse.ArgumentParser:
    """The arguments every evaluation here takes: model, SAE, layer, data and results folder."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--model", required=True, help="HF model folder")
    p.add_argument("--sae", required=True, help="SAE folder")
    p.add_argument("--layer", type=int, help="decoder layer (default: the SAE's)")
    p.add_argument("--data", type=Path, required=True, help=data_help)
    p.add_argument("--out", type=Path, required=True, help="results folder")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    p = eval_parser(__doc__, "JSONL from unsafe_code_data.py")
    p.add_argument("--train-max", type=int, nargs=2, metavar=("UNSAFE", "CLEAN"),
                   help="at most this many train snippets of each label (seeded sample)")
    p.add_argument("--heldout-max", type=int, nargs=2, metavar=("UNSAFE", "CLEAN"))
    p.add_argument("--max-tokens", type=int, default=2048,
                   help="tokens kept per snippet (default: all of every stdlib snippet; a cut "
                   "hides the flagged line of long functions from every rule)")
    p.add_argument("--batch", type=int, default=8, help="snippets per model forward")
    p.add_argument("--probe-l2", type=float, nargs="+", default=[1e-4, 1e-3, 1e-2, 1e-1, 1.0],
                   help="L2 penalty of the probe; several: chosen by 3-fold cross-validation "
                   "on the train split, folds split by source file")
    p.add_argument("--n-features", type=int, nargs="+", default=list(N_FEATURES),
                   help="features of the weighted-features SAE rule; several: chosen by 3-fold "
                   "cross-validation on the train split")
    p.add_argument("--rules-out", type=Path, help="rule pack to write (default: OUT/rules.yaml)")
    p.add_argument("--probe-out", type=Path, help="probe folder (default: OUT/probes)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", type=Path, help="folder caching the snippets' residual rows "
                   "(reused when model, layer, --max-tokens and snippets match)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.manual_seed(args.seed)

    tm, hm = args.train_max or (None, None), args.heldout_max or (None, None)
    train_rows = load_split(args.data, "train", tm[0], tm[1], args.seed)
    test_rows = load_split(args.data, "heldout", hm[0], hm[1], args.seed)
    sae = load_sae_for(args.sae)
    layer = sae.layer if args.layer is None else args.layer
    if layer != sae.layer:
        logger.warning("--layer %d, but the SAE reads layer %d", layer, sae.layer)
    loaded: list[TextEncoder] = []

    def encoder() -> TextEncoder:
        if not loaded:
            loaded.append(TextEncoder.load(args.model, layer, max_tokens=args.max_tokens,
                                           batch=args.batch))
        return loaded[0]

    start = time.perf_counter()
    split_rows = []
    for name, rows in (("train", train_rows), ("heldout", test_rows)):
        texts = [r["text"] for r in rows]
        cache = args.cache / f"{name}.safetensors" if args.cache else None
        split_rows.append(residual_rows(encoder, texts, name, cache,
                                        cache_key(args.model, layer, args.max_tokens, texts)))
    seconds = time.perf_counter() - start
    tokens = sum(len(r) for rows in split_rows for r in rows)
    logger.info("%d snippets, %d tokens in %.0f s (%.0f tokens/s)", len(train_rows) +
                len(test_rows), tokens, seconds, tokens / seconds)
    tr_f, te_f = (snippet_features(sae, rows) for rows in split_rows)

    def labels(rows: list[dict[str, Any]]) -> Tensor:
        return torch.tensor([int(r["label"]) for r in rows])

    l2 = args.probe_l2[0] if len(args.probe_l2) == 1 else args.probe_l2
    m = evaluate((tr_f, split_rows[0], labels(train_rows)),
                 (te_f, split_rows[1], labels(test_rows)), l2, [r["source"] for r in train_rows])
    direction = m["probe_max"].pop("_direction")
    m["probe"].pop("_direction")
    m["per_test"] = per_test_features(
        (tr_f, labels(train_rows), [r.get("flagged", []) for r in train_rows]),
        (te_f, labels(test_rows), [r.get("flagged", []) for r in test_rows]))
    m["rule_any"] = any_rule((tr_f, labels(train_rows)), (te_f, labels(test_rows)),
                             [t["feature"] for t in m["per_test"]])
    logger.info("weighted-features SAE rule (cross-validating %s features)", args.n_features)
    m["rule_weighted"] = weighted_rule(
        (snippet_codes(sae, split_rows[0]), labels(train_rows)),
        (snippet_codes(sae, split_rows[1]), labels(test_rows)), sae.d_sae, args.n_features,
        [r["source"] for r in train_rows])
    weighted_direction = m["rule_weighted"].pop("_direction")
    catalog = load_catalog(args.sae, None, sae.d_sae)
    label = catalog.entries[m["rule"]["feature"]].label if (
        catalog and m["rule"]["feature"] in catalog.entries) else ""
    m = {"model": str(args.model), "sae": str(args.sae), "layer": layer, "data": str(args.data),
         "out": str(args.out), "max_tokens": args.max_tokens, "seed": args.seed,
         "n": {name: {"unsafe": sum(int(r["label"]) for r in rows),
                      "clean": sum(1 - int(r["label"]) for r in rows)}
               for name, rows in (("train", train_rows), ("heldout", test_rows))},
         "tokens": tokens, "extract_seconds": round(seconds, 1),
         "rule_label": label, **m,
         "command": "bench/unsafe_code_eval.py " + " ".join(sys.argv[1:] if argv is None
                                                              else argv)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "metrics.json").write_text(json.dumps(m, indent=2) + "\n", encoding="utf-8")
    rules_path = args.rules_out or args.out / "rules.yaml"
    rules_path.parent.mkdir(parents=True, exist_ok=True)
    rules_path.write_text(rules_yaml(m, label), encoding="utf-8")
    probe = Probe(ProbeMeta(
        name=PROBE_NAME, bias=m["probe_max"]["bias"], threshold=m["probe_max"]["threshold"],
        layer=layer, description="per-token logistic probe of bandit-labelled Python, trained "
        "on each snippet's max over tokens (score: a logit); use it without a window, a token "
        "above the threshold flags the text (bench/unsafe_code_eval.py)"), direction)
    probe_dir = args.probe_out or args.out / "probes"
    probe.save(probe_dir)
    save_weighted_probe(m["rule_weighted"], weighted_direction, SAE_PROBE_NAME, layer, probe_dir,
                        "bandit-labelled Python")
    (args.out / "features.json").write_text(json.dumps(
        {"features": catalog_entries(m, label)}, indent=2) + "\n", encoding="utf-8")
    console = Console()
    console.print(results_table(m))
    if m["per_test"]:
        console.print(per_test_table(m["per_test"]))
    console.print(f"metrics: {args.out / 'metrics.json'}; rule pack: {rules_path}; probes: "
                  f"{probe_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
