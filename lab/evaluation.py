"""``latentguard eval``: how a rule pack and its probes do on the user's labelled texts.

Every text goes through the HF model (cut after the SAE's layer) and then through the sidecar's
own per-token path (:func:`latentguard.monitors.rules.rule_signals` and a ``RuleSession``), so a
rule "fires" here exactly when it would fire in serving. Per text, a rule's score is the max
over its in-scope tokens of its first signal's value (windowed when the signal has a window;
negated for ``<`` / ``<=``, so higher always means "more like firing"), or for an end rule
(``check: end``) that value at the text's end; a probe's score is the max of its score.
Activations are cached on disk (see :mod:`latentguard.lab.evalcache`), so rerunning with another
pack or threshold costs only the SAE encode.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel
from torch import Tensor

from latentguard.lab.errors import LabError
from latentguard.monitors.discovery import auroc, recall_at_fpr
from latentguard.monitors.errors import MonitorError
from latentguard.monitors.probes import ProbeSet
from latentguard.monitors.rules import (
    Policy,
    Rule,
    RuleEngine,
    RulePack,
    load_rule_pack,
    rule_signals,
    signal_series,
)
from latentguard.monitors.sae import SAE, load_sae

__all__ = [
    "DetectorReport", "EvalReport", "EvaluationError", "GroupMetrics", "Item", "Monitor",
    "TextSignals", "evaluate", "load_monitor", "read_labelled", "text_hash",
]

Role = Literal["prompt", "generation"]
EVAL_POLICY = Policy(name="eval", rules=["*"])


class EvaluationError(LabError):
    """Bad labelled data, or a pack, SAE or probe set that does not load or fit."""


@dataclass(frozen=True)
class Item:
    text: str
    label: int
    group: str = ""
    prompt: str = ""
    """What came before ``text`` (a model's completion's prompt): read by the model with it,
    its tokens fed as prompt tokens, so rules see them only in their prompt scope."""

    @property
    def full_text(self) -> str:
        return self.prompt + self.text


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def read_labelled(path: str | Path) -> list[Item]:
    """Objects ``{"text": str, "label": 0|1, "group": str?, "prompt": str?}``, one per line; a
    bad line is an error naming ``file:line`` (a silently dropped line would bias every
    number)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise EvaluationError(f"{path}: cannot read ({exc})") from None
    items = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path.name}:{n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise EvaluationError(f"{where}: not JSON ({exc.msg})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
            raise EvaluationError(f"{where}: expected an object with a string 'text'")
        label = obj.get("label")
        if isinstance(label, bool) or label not in (0, 1):
            raise EvaluationError(f"{where}: 'label' must be 0 or 1, got {label!r}")
        group = obj.get("group", "")
        if not isinstance(group, str | int):
            raise EvaluationError(f"{where}: 'group' must be a string, got {group!r}")
        prompt = obj.get("prompt", "")
        if not isinstance(prompt, str):
            raise EvaluationError(
                f"{where}: 'prompt' must be a string, got {type(prompt).__name__}")
        items.append(Item(obj["text"], int(label), str(group), prompt))
    if not items:
        raise EvaluationError(f"{path}: no labelled texts")
    return items


# ---- the monitor: pack, SAE, probes ----------------------------------------------------------

@dataclass
class Monitor:
    """What the sidecar would load: the SAE, its probes and the pack, compiled in one engine."""

    sae: SAE
    probes: ProbeSet | None
    pack: RulePack
    engine: RuleEngine
    """Every rule of the pack compiled (disabled ones as enabled copies, to measure them)."""


def load_pack(path: str | Path) -> RulePack:
    path = Path(path)
    try:
        return load_rule_pack(path.read_text(encoding="utf-8"), source=str(path))
    except OSError as exc:
        raise EvaluationError(f"rules: cannot read {path} ({exc})") from None
    except MonitorError as exc:
        raise EvaluationError(str(exc)) from None


def load_monitor(sae_path: str | Path, rules: str | Path | None = None,
                 probes: str | Path | None = None) -> Monitor:
    """The SAE, the probes beside it (``probes/``) and the pack (``rules`` or the SAE's
    ``rules.yaml``), checked against each other as the sidecar checks them."""
    sae_path = Path(sae_path)
    folder = sae_path if sae_path.is_dir() else sae_path.parent
    try:
        sae = load_sae(sae_path)
        probe_dir = Path(probes) if probes else folder / "probes"
        probe_set = (ProbeSet.load(probe_dir, d_in=sae.d_in, d_sae=sae.d_sae)
                     if probe_dir.is_dir() else None)
    except MonitorError as exc:
        raise EvaluationError(f"sae: {exc}") from None
    rules_path = Path(rules) if rules else folder / "rules.yaml"
    if not rules_path.is_file():
        raise EvaluationError(f"rules: {rules_path} not found (give --rules)")
    pack = load_pack(rules_path)
    return Monitor(sae, probe_set, pack, compile_rules(pack.rules, probe_set, sae))


def compile_rules(rules: Sequence[Rule], probes: ProbeSet | None, sae: SAE) -> RuleEngine:
    enabled = [r.model_copy(update={"enabled": True}) for r in rules]
    try:
        return RuleEngine(enabled, probes=probes, d_sae=sae.d_sae)
    except MonitorError as exc:
        raise EvaluationError(f"rules: {exc}") from None


# ---- per-text signals ------------------------------------------------------------------------

@dataclass(frozen=True)
class TextSignals:
    """One text through the sidecar's path."""

    rule_scores: dict[str, float]
    """Rule -> max over in-scope tokens of its first signal (oriented: higher fires);
    rules whose scope excludes the texts are absent."""
    fired: set[str]
    probe_scores: dict[str, float]


def in_scope(rule: Rule, role: Role) -> bool:
    return rule.scope == "both" or rule.scope == role


def text_signals(monitor: Monitor, rows: Tensor, role: Role, n_prompt: int = 0) -> TextSignals:
    """Rule scores, fired rules and probe scores of one text's residual rows; with
    ``n_prompt``, the first ``n_prompt`` rows are its prompt's (fed as prompt tokens, and
    scored only by rules whose scope holds them) and the rest are fed as ``role``."""
    engine = monitor.engine
    features, probes = rule_signals(monitor.sae, engine, monitor.probes, rows)
    n = rows.shape[0]
    if not 0 <= n_prompt < n:
        raise EvaluationError(f"n_prompt: {n_prompt} prompt rows of a text of {n} rows leave "
                              "no text (raise --max-tokens)")
    is_prompt = [True] * n_prompt + [role == "prompt"] * (n - n_prompt)
    session = engine.new_session(EVAL_POLICY)
    hits = session.step(features, probes, list(range(1, n + 1)), is_prompt)
    hits += session.finish()
    scores = {}
    for name, compiled in engine.rules.items():
        if not in_scope(compiled.rule, role):
            continue
        scope = compiled.rule.scope
        seen = torch.tensor([scope == "both" or (scope == "prompt") == p for p in is_prompt])
        first = compiled.signals[0]
        sign = 1.0 if first.signal.op in (">", ">=") else -1.0
        series = [sign * v for v in signal_series(
            first, features[seen], probes[seen] if probes is not None else None)]
        scores[name] = series[-1] if compiled.rule.check == "end" else max(series)
    probe_max = {}
    if probes is not None:
        top = probes[n_prompt:].max(0).values.tolist()
        probe_max = dict(zip(engine.probe_names, top, strict=True))
    return TextSignals(scores, {h.rule for h in hits}, probe_max)


# ---- metrics ---------------------------------------------------------------------------------

class GroupMetrics(BaseModel):
    group: str
    n_pos: int
    n_neg: int
    auroc: float | None
    recall: float | None
    """Fraction of this group's positives on which the detector fired."""
    fpr: float | None


class DetectorReport(BaseModel):
    name: str
    kind: Literal["rule", "probe"]
    enabled: bool = True
    threshold: str = ""
    """The detector's own firing condition, as text."""
    evaluated: bool = True
    note: str = ""
    auroc: float | None = None
    auroc_ci95: tuple[float, float] | None = None
    recall: float | None = None
    """At the detector's own threshold: fraction of positives it fired on."""
    fpr: float | None = None
    recall_at_1pct_fpr: float | None = None
    threshold_at_1pct_fpr: float | None = None
    groups: list[GroupMetrics] = []


class EvalReport(BaseModel):
    data: str
    model: str
    sae: str
    rules: str
    layer: int
    texts_as: Role
    n_pos: int
    n_neg: int
    bootstrap: int
    seed: int
    detectors: list[DetectorReport]


def _auroc(scores: Tensor, labels: Tensor) -> float | None:
    pos, neg = scores[labels == 1], scores[labels == 0]
    if not pos.numel() or not neg.numel():
        return None
    return float(auroc(pos, neg))


def _rate(fired: Tensor, mask: Tensor) -> float | None:
    return float(fired[mask].double().mean()) if bool(mask.any()) else None


def bootstrap_ci(scores: Tensor, labels: Tensor, n: int, seed: int) -> tuple[float, float] | None:
    """95% percentile interval of AUROC over ``n`` resamplings of the texts (seeded)."""
    if n <= 0:
        return None
    gen = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(n):
        idx = torch.randint(len(scores), (len(scores),), generator=gen)
        value = _auroc(scores[idx], labels[idx])
        if value is not None:
            values.append(value)
    if not values:
        return None
    q = torch.tensor(values, dtype=torch.float64).quantile(torch.tensor(
        [0.025, 0.975], dtype=torch.float64))
    return float(q[0]), float(q[1])


def metrics(report: DetectorReport, scores: Sequence[float], fired: Sequence[bool],
            items: Sequence[Item], bootstrap: int, seed: int) -> DetectorReport:
    """The report with AUROC, its CI, recall/FPR when fired, recall at 1% FPR, per group."""
    s = torch.tensor(scores, dtype=torch.float64).nan_to_num(neginf=-1e300, posinf=1e300)
    y = torch.tensor([i.label for i in items])
    f = torch.tensor(fired, dtype=torch.bool)
    pos, neg = y == 1, y == 0
    at_fpr: tuple[float | None, float | None] = (None, None)
    if bool(pos.any()) and bool(neg.any()):
        at_fpr = recall_at_fpr(s[pos], s[neg], 0.01)
    groups = []
    for g in sorted({i.group for i in items}):
        m = torch.tensor([i.group == g for i in items])
        groups.append(GroupMetrics(group=g, n_pos=int((m & pos).sum()), n_neg=int((m & neg).sum()),
                                   auroc=_auroc(s[m], y[m]), recall=_rate(f, m & pos),
                                   fpr=_rate(f, m & neg)))
    return report.model_copy(update={
        "auroc": _auroc(s, y), "auroc_ci95": bootstrap_ci(s, y, bootstrap, seed),
        "recall": _rate(f, pos), "fpr": _rate(f, neg), "recall_at_1pct_fpr": at_fpr[0],
        "threshold_at_1pct_fpr": at_fpr[1] if at_fpr[1] is None or math.isfinite(at_fpr[1])
        else None, "groups": groups if len(groups) > 1 else []})


def condition_text(rule: Rule) -> str:
    sigs = rule.when.signals()
    first = sigs[0]
    text = f"{first.source_name} {first.op} {first.threshold:g}"
    return text if len(sigs) == 1 else f"{text} (and {len(sigs) - 1} more signals)"


def evaluate(monitor: Monitor, items: Sequence[Item], signals: Sequence[TextSignals],
             role: Role, *, bootstrap: int = 1000, seed: int = 0) -> list[DetectorReport]:
    """A report per rule of the pack (in pack order), then per probe."""
    out = []
    for rule in monitor.pack.rules:
        report = DetectorReport(name=rule.name, kind="rule", enabled=rule.enabled,
                                threshold=condition_text(rule))
        if not in_scope(rule, role):
            out.append(report.model_copy(update={"evaluated": False, "note": (
                f"scope {rule.scope}: sees no {role} tokens (use --as "
                f"{'generation' if role == 'prompt' else 'prompt'})")}))
            continue
        out.append(metrics(report, [t.rule_scores[rule.name] for t in signals],
                           [rule.name in t.fired for t in signals], items, bootstrap, seed))
    for probe in monitor.probes.probes if monitor.probes is not None else []:
        threshold = probe.meta.threshold
        report = DetectorReport(name=probe.name, kind="probe",
                                threshold=f"score > {threshold:g} (the probe file's)")
        scores = [t.probe_scores[probe.name] for t in signals]
        out.append(metrics(report, scores, [v > threshold for v in scores], items, bootstrap,
                           seed))
    return out
