"""``latentguard calibrate``: each single-signal rule's threshold set from benign traffic.

A rule whose condition is one signal fires on a text exactly when some run of ``consecutive``
in-scope tokens all compare true, so its firing statistic on a text is the max over tokens of
the min over the last ``consecutive`` values (the windowed value where the signal has a window,
computed by the session's own window code; for an end rule, the value at the last token). The
threshold is put just where at most ``floor(target_fpr * n)`` benign texts would fire, then the
rule session itself is run on the benign texts with the new threshold to measure the FPR it
really gives. Rules combining several signals are left as they are: one FPR target does not say
how to split it among the signals.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel
from torch import Tensor

from latentguard.lab.evaluation import (
    EVAL_POLICY,
    EvaluationError,
    Monitor,
    Role,
    compile_rules,
    in_scope,
)
from latentguard.monitors.rules import Rule, RuleEngine, RulePack, dump_rule_pack, signal_series

__all__ = ["CalibrationReport", "RuleCalibration", "calibrate", "dump_pack"]

Signals = Sequence[tuple[Tensor, Tensor | None]]
"""Per text: ``(feature_values, probe_values)`` from ``rule_signals``."""


class RuleCalibration(BaseModel):
    rule: str
    changed: bool
    reason: str = ""
    signal: str = ""
    old_threshold: float | None = None
    new_threshold: float | None = None
    fpr_before: float | None = None
    fpr_after: float | None = None
    """Measured with the rule session on the benign texts."""


class CalibrationReport(BaseModel):
    target_fpr: float
    n_texts: int
    texts_as: Role
    rules: list[RuleCalibration]


def _statistic(values: list[float], consecutive: int, at_end: bool = False) -> float:
    """max over tokens of min over the last ``consecutive`` values (-inf: too few tokens); for
    an end rule, the value at the last token."""
    if len(values) < consecutive:
        return -math.inf
    if at_end:
        return values[-1]
    return max(min(values[t - consecutive + 1:t + 1]) for t in range(consecutive - 1,
                                                                        len(values)))


def _fpr(engine: RuleEngine, signals: Signals, role: Role) -> dict[str, float]:
    fired: dict[str, int] = dict.fromkeys(engine.rules, 0)
    for features, probes in signals:
        n = features.shape[0]
        session = engine.new_session(EVAL_POLICY)
        hits = session.step(features, probes, list(range(1, n + 1)), [role == "prompt"] * n)
        hits += session.finish()
        for name in {h.rule for h in hits}:
            fired[name] += 1
    return {name: count / max(len(signals), 1) for name, count in fired.items()}


def _threshold(rule: Rule, monitor: Monitor, signals: Signals, target_fpr: float) -> float:
    compiled = monitor.engine.rules[rule.name].signals[0]
    sig = compiled.signal
    sign = 1.0 if sig.op in (">", ">=") else -1.0
    at_end = rule.check == "end"
    stats = sorted((_statistic([sign * v for v in signal_series(compiled, f, p)],
                               sig.consecutive, at_end) for f, p in signals), reverse=True)
    allowed = int(target_fpr * len(stats) + 1e-9)
    finite = [s for s in stats if math.isfinite(s)]
    if allowed >= len(stats) or not math.isfinite(stats[allowed]):
        cut = min(finite) if finite else sign * sig.threshold
    else:
        cut = stats[allowed]
    if sig.op in (">=", "<="):
        cut = math.nextafter(cut, math.inf)  # ">= cut" must not hold on the text at the cut
    return sign * cut


def calibrate(monitor: Monitor, signals: Signals, target_fpr: float, role: Role = "prompt"
              ) -> tuple[RulePack, CalibrationReport]:
    """The pack with each enabled single-signal rule's threshold at ``target_fpr`` on the
    benign texts (``signals``), and what was done to every rule."""
    if not 0.0 <= target_fpr < 1.0:
        raise EvaluationError(f"target FPR: must be in [0, 1), got {target_fpr}")
    if not signals:
        raise EvaluationError("calibrate: no benign texts")
    before = _fpr(monitor.engine, signals, role)
    rules, results = [], []
    for rule in monitor.pack.rules:
        entry = RuleCalibration(rule=rule.name, changed=False)
        if not rule.enabled:
            entry.reason = "disabled"
        elif rule.when.signal is None:
            entry.reason = "compound condition (all/any): left unchanged"
        elif not in_scope(rule, role):
            entry.reason = f"scope {rule.scope}: sees no {role} tokens"
        else:
            sig = rule.when.signal
            new = _threshold(rule, monitor, signals, target_fpr)
            entry = RuleCalibration(rule=rule.name, changed=True, signal=sig.source_name,
                                    old_threshold=sig.threshold, new_threshold=new,
                                    fpr_before=before[rule.name])
            when = rule.when.model_copy(update={
                "signal": sig.model_copy(update={"threshold": new})})
            rule = rule.model_copy(update={"when": when, "description": calibrated_description(
                rule.description, new, sig.threshold, target_fpr, len(signals))})
        rules.append(rule)
        results.append(entry)
    pack = RulePack.model_validate(
        monitor.pack.model_copy(update={"rules": rules}).model_dump())
    after = _fpr(compile_rules([r for r in rules if r.enabled], monitor.probes, monitor.sae),
                 signals, role)
    for entry in results:
        if entry.changed:
            entry.fpr_after = after[entry.rule]
    return pack, CalibrationReport(target_fpr=target_fpr, n_texts=len(signals), texts_as=role,
                                   rules=results)


_NOTE = re.compile(r" ?\[threshold [^\]]* set by latentguard calibrate [^\]]*\]$")


def calibrated_description(description: str, new: float, old: float, target_fpr: float,
                           n_texts: int) -> str:
    """The description with a note of the calibration (replacing an earlier one), so that a
    threshold's figures elsewhere in it are not read as this threshold's."""
    note = (f"[threshold {new:.6g} set by latentguard calibrate at {target_fpr:.2%} FPR on "
            f"{n_texts} benign texts; was {old:.6g}]")
    kept = _NOTE.sub("", description)
    return f"{kept} {note}" if kept else note


def _shorthand(cond: dict[str, Any]) -> dict[str, Any]:
    """A condition as people write it: a lone signal without its ``signal:`` wrapper."""
    if "signal" in cond:
        return dict(cond["signal"])
    return {k: [_shorthand(c) for c in v] for k, v in cond.items()}


def dump_pack(pack: RulePack, header: str = "") -> str:
    """YAML of the pack as a person would write it: defaults left out except each rule's scope
    (which decides what it sees), signals in shorthand, names, order and policies kept."""
    data = pack.model_dump(mode="json", exclude_defaults=True)
    for raw, rule in zip(data.get("rules", []), pack.rules, strict=True):
        raw["scope"] = rule.scope
        raw["when"] = _shorthand(raw["when"])
    body = dump_rule_pack(data)
    return "".join(f"# {line}\n" for line in header.splitlines()) + body
