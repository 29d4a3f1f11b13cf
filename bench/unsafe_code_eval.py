"""Evaluate the "unsafe code" rules (SAE features, linear probes) on held-out snippets.

    .venv/bin/python -m bench.unsafe_code_eval --model ~/.cache/latentguard/models/gemma-3-270m \
        --sae saes/gemma-3-270m/blocks.9.hook_resid_post --layer 9 \
        --data data/unsafe_code.jsonl --out bench/results/unsafe-code

The data set comes from ``bench.unsafe_code_data`` (stdlib functions labelled by bandit, split
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

import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from torch import Tensor

from bench.common import (
    FPR,
    Fitted,
    Heldout,
    Measured,
    class_counts,
    command_line,
    eval_parser,
    heldout_metrics,
    labels,
    load_split,
    split_residuals,
    write_results,
)
from latentguard.lab.discovery import load_catalog, load_sae_for, progress_bar
from latentguard.monitors.discovery import auroc, threshold_at_fpr
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
from latentguard.monitors.sae import SAE

logger = logging.getLogger(__name__)

PROBE_NAME = "unsafe-code"
SAE_PROBE_NAME = "unsafe-code-sae"
N_FEATURES = (16, 32, 64, 128)


# ---- results -------------------------------------------------------------------------------

@dataclass
class FeatureRule:
    """The single-feature rule ``{feature: F, threshold: T}``: the best feature on train."""

    feature: int
    train_auroc: float
    threshold: float
    train_recall_at_threshold: float
    heldout: Heldout


@dataclass
class TopFeature:
    feature: int
    train_auroc: float
    heldout_auroc: float


@dataclass
class ProbeMetrics:
    """A linear probe of the residual (mean, or max over tokens); its direction is apart."""

    train_auroc: float
    threshold: float
    bias: float
    l2: float
    l2_cv_auroc: dict[str, float | None]
    """Cross-validated train AUROC per penalty tried (empty when one was given)."""
    train_recall_at_threshold: float
    heldout: Heldout


@dataclass
class FeatureWeight:
    feature: int
    weight: float


@dataclass
class WeightedRule:
    """The SAE rule over weighted features (a features probe); its direction is apart."""

    n_features: int
    n_features_cv_auroc: dict[str, float | None]
    l2: float
    bias: float
    threshold: float
    train_auroc: float
    train_recall_at_threshold: float
    heldout: Heldout
    weights: list[FeatureWeight]
    """The nonzero weights, largest magnitude first."""


@dataclass
class AnyFeature:
    feature: int
    threshold: float


@dataclass
class AnyRule:
    """An ``any`` rule: each bandit test's best feature, thresholds at one shared rank."""

    features: list[AnyFeature]
    rank: int
    train_auroc: float
    train_recall_at_threshold: float
    train_fpr_at_threshold: float
    heldout: Heldout


@dataclass
class PerTest:
    """The feature best separating the snippets one bandit test flags from the clean ones."""

    test: str
    name: str
    feature: int
    train_snippets: int
    heldout_snippets: int
    train_auroc: float
    heldout_auroc: float | None
    """None with fewer than 3 such held-out snippets."""


@dataclass
class Candidates:
    """What ``evaluate`` chose on train and measured held out."""

    rule: FeatureRule
    top_features: list[TopFeature]
    probe: Fitted[ProbeMetrics]
    probe_max: Fitted[ProbeMetrics]


@dataclass
class UnsafeCodeResults:
    """``metrics.json``: the run's settings, then every candidate's metrics."""

    model: str
    sae: str
    layer: int
    data: str
    out: str
    max_tokens: int
    seed: int
    n: dict[str, dict[str, int]]
    tokens: int
    extract_seconds: float
    rule_label: str
    rule: FeatureRule
    top_features: list[TopFeature]
    probe: ProbeMetrics
    probe_max: ProbeMetrics
    per_test: list[PerTest]
    rule_any: AnyRule | None
    rule_weighted: WeightedRule
    command: str


# ---- features -------------------------------------------------------------------------------

@torch.no_grad()
def snippet_features(sae: SAE, rows: Sequence[Tensor]) -> Tensor:
    """Per-snippet max of every SAE feature ``[n, d_sae]``."""
    return torch.stack([sae.encode(r).amax(0) for r in rows]).clone()


@torch.no_grad()
def snippet_codes(sae: SAE, rows: Sequence[Tensor]) -> list[Codes]:
    """Each snippet's sparse SAE code: per token the ``k`` largest activations (a TopK SAE's
    own ``k``: its whole code; 64 for other architectures)."""
    k = min(int(getattr(sae, "k", 64) or 64), sae.d_sae)
    return [Codes(*(t.clone() for t in sae.topk(r, k))) for r in rows]


# ---- metrics --------------------------------------------------------------------------------

def evaluate(train: tuple[Tensor, list[Tensor], Tensor],
             test: tuple[Tensor, list[Tensor], Tensor],
             l2: float | Sequence[float], groups: Sequence[str] = ()) -> Candidates:
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
    rule = FeatureRule(
        feature=best, train_auroc=float(scores[best]), threshold=rule_t,
        train_recall_at_threshold=float((feats[pos, best] > rule_t).double().mean()),
        heldout=heldout_metrics(t_feats[t_pos, best], t_feats[t_neg, best], rule_t))
    top_features = [TopFeature(feature=int(f), train_auroc=float(scores[f]),
                               heldout_auroc=float(h))
                    for f, h in zip(top, top_heldout, strict=True)]
    probes: list[Fitted[ProbeMetrics]] = []
    for fit, score, x, t_x in ((fit_mean_probe, mean_scores, means, t_means),
                               (fit_max_probe, max_scores, rows, t_rows)):
        cv: dict[str, float | None] = {}
        penalty = l2
        if not isinstance(penalty, float | int):
            penalty, cv = choose_by_cv(fit, score, x, y, groups, penalty)
        direction, bias = fit(x, y, penalty)
        s_train, s_test = score(x, direction, bias), score(t_x, direction, bias)
        t = threshold_at_fpr(s_train[neg], FPR)
        probes.append(Fitted(ProbeMetrics(
            train_auroc=float(auroc(s_train[pos], s_train[neg])), threshold=t, bias=bias,
            l2=penalty, l2_cv_auroc=cv,
            train_recall_at_threshold=float((s_train[pos] > t).double().mean()),
            heldout=heldout_metrics(s_test[t_pos], s_test[t_neg], t)), direction))
    return Candidates(rule, top_features, probe=probes[0], probe_max=probes[1])


def weighted_rule(train: tuple[list[Codes], Tensor], test: tuple[list[Codes], Tensor],
                  d_sae: int, n_features: Sequence[int], groups: Sequence[str],
                  l2: float = 1e-2) -> Fitted[WeightedRule]:
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
    return Fitted(WeightedRule(
        n_features=int(n), n_features_cv_auroc=cv, l2=l2, bias=bias, threshold=t,
        train_auroc=float(auroc(s_train[y == 1], s_train[y == 0])),
        train_recall_at_threshold=float((s_train[y == 1] > t).double().mean()),
        heldout=heldout_metrics(s_test[t_y == 1], s_test[t_y == 0], t),
        weights=[FeatureWeight(f, w) for f, w in nonzero_weights(direction)]), direction)


def save_probe(probe: Fitted[ProbeMetrics], name: str, layer: int, folder: Path,
               description: str) -> None:
    """A residual probe ``name`` in ``folder``, with the threshold chosen on train."""
    Probe(ProbeMeta(name=name, bias=probe.metrics.bias, threshold=probe.metrics.threshold,
                    layer=layer, description=description), probe.direction).save(folder)


def save_weighted_probe(rule: Fitted[WeightedRule], name: str, layer: int, folder: Path,
                        what: str) -> None:
    """The weighted-features rule as a features probe ``name`` in ``folder``."""
    m = rule.metrics
    Probe(ProbeMeta(
        name=name, bias=m.bias, threshold=m.threshold, layer=layer, input="features",
        description=f"SAE rule: per token, a weighted sum of {len(m.weights)} SAE "
        f"features of {what}, trained on each text's max over tokens (score: a logit); use it "
        "without a window"), rule.direction).save(folder)


def results_table(n: dict[str, dict[str, int]], rule: FeatureRule, probe: ProbeMetrics,
                  probe_max: ProbeMetrics, *, rule_any: AnyRule | None = None,
                  rule_weighted: WeightedRule | None = None, what: str = "unsafe code",
                  classes: tuple[str, str] = ("unsafe", "clean")) -> Table:
    """Every candidate side by side: train AUROC, then the held-out metrics."""
    one, zero = classes
    table = Table(title=f"{what}, held out: {n['heldout'][one]} {one} / "
                  f"{n['heldout'][zero]} {zero} (train {n['train'][one]} / "
                  f"{n['train'][zero]})")
    table.add_column("metric")
    columns: list[tuple[str, Measured]] = [(f"SAE rule (feature {rule.feature})", rule)]
    if rule_any is not None:
        columns.append((f"SAE rule: any of {len(rule_any.features)} features", rule_any))
    if rule_weighted is not None:
        columns.append((f"SAE rule: {len(rule_weighted.weights)} weighted features",
                        rule_weighted))
    columns += [("linear probe (mean residual)", probe),
                ("linear probe (max over tokens)", probe_max)]
    for header, _ in columns:
        table.add_column(header, justify="right")
    cols = [c for _, c in columns]
    rows = [("AUROC (held out)", "auroc", "{:.3f}"),
            ("recall at 1% FPR (held out)", "recall_at_1pct_fpr", "{:.1%}"),
            ("recall at the train threshold", "recall_at_train_threshold", "{:.1%}"),
            ("FPR at the train threshold", "fpr_at_train_threshold", "{:.1%}")]
    table.add_row("AUROC (train)", *(f"{c.train_auroc:.3f}" for c in cols))
    for name, key, fmt in rows:
        table.add_row(name, *(fmt.format(getattr(c.heldout, key)) for c in cols))
    return table


def any_rule(train: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor],
             features: Sequence[int]) -> AnyRule | None:
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
    held = replace(heldout_metrics(te_s[t_y == 1], te_s[t_y == 0], float("inf")),
                   recall_at_train_threshold=float(fires(t_feats[t_y == 1]).double().mean()),
                   fpr_at_train_threshold=float(fires(t_feats[t_y == 0]).double().mean()))
    return AnyRule(features=[AnyFeature(f, float(t)) for f, t in zip(idx, best_t, strict=True)],
                   rank=best_k, train_auroc=float(auroc(tr_s[y == 1], tr_s[y == 0])),
                   train_recall_at_threshold=float(fires(feats[y == 1]).double().mean()),
                   train_fpr_at_threshold=float(fires(feats[y == 0]).double().mean()),
                   heldout=held)


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
                      min_train: int = 10) -> list[PerTest]:
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
        out.append(PerTest(test=test_id, name=bandit_name(test_id), feature=best,
                           train_snippets=int(has.sum()), heldout_snippets=int(t_has.sum()),
                           train_auroc=float(scores[best]), heldout_auroc=heldout))
    return out


def catalog_entries(rule: FeatureRule, per_test: Sequence[PerTest], label: str
                    ) -> list[dict[str, Any]]:
    """Catalog entries for the rule's feature and each bandit test's best feature (merged)."""
    entries: dict[int, dict[str, Any]] = {rule.feature: {
        "index": rule.feature, "label": "unsafe Python code (bandit)",
        "tags": ["unsafe-code", "security", "code"], "description": (
            f"Best single feature (train AUROC {rule.train_auroc:.3f}) separating Python "
            f"functions that bandit flags from clean ones; held-out AUROC "
            f"{rule.heldout.auroc:.3f} (bench/unsafe_code_eval.py). {label}").strip()}}
    for t in per_test:
        held = f", held-out {t.heldout_auroc:.3f}" if t.heldout_auroc is not None else ""
        line = (f"bandit {t.test} {t.name}: AUROC {t.train_auroc:.3f} on "
                f"{t.train_snippets} train snippets vs clean{held}")
        e = entries.setdefault(t.feature, {"index": t.feature, "label": "", "tags": [
            "security", "code"], "description": ""})
        e["label"] = (e["label"] + "; " if e["label"] else "") + f"{t.name} ({t.test})"
        e["tags"] = [*e["tags"], t.test]
        e["description"] = (e["description"] + "\n" if e["description"] else "") + line
    return [entries[i] for i in sorted(entries)]


def per_test_table(rows: Sequence[PerTest]) -> Table:
    table = Table(title="best single feature per bandit test (vs clean snippets)")
    for name in ("test", "name", "feature", "train snippets", "train AUROC", "held-out snippets",
                 "held-out AUROC"):
        table.add_column(name, justify="left" if name in ("test", "name") else "right")
    for t in rows:
        held = "-" if t.heldout_auroc is None else f"{t.heldout_auroc:.3f}"
        table.add_row(t.test, t.name, str(t.feature), str(t.train_snippets),
                      f"{t.train_auroc:.3f}", str(t.heldout_snippets), held)
    return table


# ---- outputs --------------------------------------------------------------------------------

def any_rule_yaml(rule: AnyRule | None, per_test: Sequence[PerTest]) -> str:
    if rule is None:
        return ""
    names: dict[int, list[str]] = {}
    for t in per_test:
        names.setdefault(t.feature, []).append(f"{t.test} {t.name}")
    desc = (f"Python that bandit flags: any of {len(rule.features)} SAE features, each the "
            f"best on the train split for one bandit test, thresholds at a shared rank of the "
            f"train negatives (train FPR {rule.train_fpr_at_threshold:.1%}); "
            f"{measured(rule)}")
    lines = ["  - name: unsafe-code-any", f"    description: {json.dumps(desc)}",
             "    severity: medium", "    scope: generation", "    when:", "      any:"]
    for f in rule.features:
        note = f"  # {', '.join(names[f.feature])}" if f.feature in names else ""
        lines.append(f"        - {{feature: {f.feature}, threshold: {f.threshold:.6g}}}{note}")
    lines.append("    action: {type: alert}")
    return "\n".join(lines) + "\n"


def weighted_rule_yaml(rule: WeightedRule, name: str, what: str, severity: str) -> str:
    """The weighted-features SAE rule (``{probe: name}``, a features probe), an alert."""
    top = ", ".join(f"{w.feature} ({w.weight:+.3g})" for w in rule.weights[:5])
    desc = (f"{what}: the {name} features probe, a weighted sum of {len(rule.weights)} SAE "
            f"features (largest weights: {top}; all in probes/{name}.safetensors) on any token "
            f"above its 1%-FPR point on the train split; {measured(rule)}")
    return (f"  - name: {name}\n    description: {json.dumps(desc)}\n"
            f"    severity: {severity}\n    scope: generation\n"
            f"    when: {{probe: {name}, threshold: {rule.threshold:.6g}}}\n"
            "    action: {type: alert}\n")


def measured(m: Measured) -> str:
    """What a rule's description says of it: held-out AUROC, recall and FPR."""
    held = m.heldout
    return (f"held-out AUROC {held.auroc:.3f}, recall {held.recall_at_train_threshold:.1%}"
            f" at FPR {held.fpr_at_train_threshold:.1%} (train 1%-FPR threshold)")


def rules_yaml(m: UnsafeCodeResults) -> str:
    rule, probe = m.rule, m.probe_max
    about = f" ({m.rule_label})" if m.rule_label else ""
    probe_desc = (f"Python that bandit flags (medium severity or above): the {PROBE_NAME} "
                  f"linear probe on any token above its 1%-FPR point on the train split; "
                  f"{measured(probe)}")
    desc = (f"Python that bandit flags: SAE feature {rule.feature}{about} above its "
            f"1%-FPR point on the train split; {measured(rule)}")
    text = (
        f"# Written by bench/unsafe_code_eval.py for the SAE {m.sae} (layer {m.layer});\n"
        f"# feature indices mean nothing with another SAE. Metrics: {m.out}/metrics.json.\n"
        "rules:\n"
        "  - name: unsafe-code\n"
        f"    description: {json.dumps(probe_desc)}\n"
        "    severity: high\n"
        "    scope: generation\n"
        f"    when: {{probe: {PROBE_NAME}, threshold: {probe.threshold:.6g}}}\n"
        "    action: {type: block}\n"
        "  - name: unsafe-code-feature\n"
        f"    description: {json.dumps(desc)}\n"
        "    severity: medium\n"
        "    scope: generation\n"
        f"    when: {{feature: {rule.feature}, threshold: {rule.threshold:.6g}}}\n"
        "    action: {type: alert}\n"
        f"{any_rule_yaml(m.rule_any, m.per_test)}"
        f"{weighted_rule_yaml(m.rule_weighted, SAE_PROBE_NAME, 'Python that bandit flags', 'high')}"
        "policies:\n"
        "  - name: default\n"
        "    rules: [\"*\"]\n"
    )
    load_rule_pack(text, source="rules.yaml")  # raises if the pack is not valid
    return text


def main(argv: Sequence[str] | None = None) -> int:
    p = eval_parser(__doc__, "JSONL from bench.unsafe_code_data")
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
    res = split_residuals(args.model, layer, {"train": [r["text"] for r in train_rows],
                                              "heldout": [r["text"] for r in test_rows]},
                          max_tokens=args.max_tokens, batch=args.batch, cache=args.cache)
    rows, t_rows = res.rows["train"], res.rows["heldout"]
    logger.info("%d snippets, %d tokens in %.0f s (%.0f tokens/s)", len(train_rows) +
                len(test_rows), res.tokens, res.seconds, res.tokens / res.seconds)
    tr_f, te_f = snippet_features(sae, rows), snippet_features(sae, t_rows)
    y, t_y = labels(train_rows), labels(test_rows)
    # CV folds by package where the data has one (the third-party corpus), else by file.
    sources = [r.get("group") or r["source"] for r in train_rows]

    l2 = args.probe_l2[0] if len(args.probe_l2) == 1 else args.probe_l2
    cands = evaluate((tr_f, rows, y), (te_f, t_rows, t_y), l2, sources)
    per_test = per_test_features((tr_f, y, [r.get("flagged", []) for r in train_rows]),
                                 (te_f, t_y, [r.get("flagged", []) for r in test_rows]))
    rule_any = any_rule((tr_f, y), (te_f, t_y), [t.feature for t in per_test])
    logger.info("weighted-features SAE rule (cross-validating %s features)", args.n_features)
    weighted = weighted_rule((snippet_codes(sae, rows), y), (snippet_codes(sae, t_rows), t_y),
                             sae.d_sae, args.n_features, sources)
    catalog = load_catalog(args.sae, None, sae.d_sae)
    feature = cands.rule.feature
    label = catalog.entries[feature].label if catalog and feature in catalog.entries else ""
    m = UnsafeCodeResults(
        model=str(args.model), sae=str(args.sae), layer=layer, data=str(args.data),
        out=str(args.out), max_tokens=args.max_tokens, seed=args.seed,
        n=class_counts({"train": train_rows, "heldout": test_rows}, ("unsafe", "clean")),
        tokens=res.tokens, extract_seconds=round(res.seconds, 1), rule_label=label,
        rule=cands.rule, top_features=cands.top_features, probe=cands.probe.metrics,
        probe_max=cands.probe_max.metrics, per_test=per_test, rule_any=rule_any,
        rule_weighted=weighted.metrics, command=command_line("bench.unsafe_code_eval", argv))
    write_results(args.out / "metrics.json", m)
    rules_path = args.rules_out or args.out / "rules.yaml"
    rules_path.parent.mkdir(parents=True, exist_ok=True)
    rules_path.write_text(rules_yaml(m), encoding="utf-8")
    probe_dir = args.probe_out or args.out / "probes"
    save_probe(cands.probe_max, PROBE_NAME, layer, probe_dir, "per-token logistic probe of "
               "bandit-labelled Python, trained on each snippet's max over tokens (score: a "
               "logit); use it without a window, a token above the threshold flags the text "
               "(bench/unsafe_code_eval.py)")
    save_weighted_probe(weighted, SAE_PROBE_NAME, layer, probe_dir, "bandit-labelled Python")
    (args.out / "features.json").write_text(json.dumps(
        {"features": catalog_entries(m.rule, m.per_test, label)}, indent=2) + "\n",
        encoding="utf-8")
    console = Console()
    console.print(results_table(m.n, m.rule, m.probe, m.probe_max, rule_any=m.rule_any,
                                rule_weighted=m.rule_weighted))
    if m.per_test:
        console.print(per_test_table(m.per_test))
    console.print(f"metrics: {args.out / 'metrics.json'}; rule pack: {rules_path}; probes: "
                  f"{probe_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
