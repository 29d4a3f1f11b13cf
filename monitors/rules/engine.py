"""Compile rules once per rule set; evaluate them for every request of a step in one
:class:`RuleBatch` (the sidecar), or one request at a time in a :class:`RuleSession`.

The engine checks every feature index against the SAE width and every probe name against the
loaded probes, and collects the feature columns the rules read (``signal_features``): the caller
encodes with ``SAE.encode_for_monitor(x, engine.signal_features, k)`` and passes the
``selected`` columns to ``RuleBatch.step`` (or ``RuleSession.step``). The features that
features probes weigh are among those columns too (``probe_feature_columns`` picks them out
for ``ProbeSet.score``), so one encode serves rules and probes.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from latentguard.monitors.errors import RuleValidationError, UnknownFeatureError
from latentguard.monitors.rules.batch import RuleBatch
from latentguard.monitors.rules.schema import Condition, Policy, Rule, Signal
from latentguard.monitors.rules.session import RuleSession

__all__ = ["CompiledRule", "CompiledSignal", "ProbeNames", "RuleCheck", "RuleEngine"]

logger = logging.getLogger(__name__)

OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}


class ProbeNames(Protocol):
    """What the engine needs from a probe set: probe names in score-column order."""

    @property
    def names(self) -> list[str]: ...


def _probe_features(probes: ProbeNames | None) -> list[int]:
    support = getattr(probes, "feature_support", None)
    return [int(f) for f in support] if support is not None else []


@dataclass(frozen=True)
class CompiledSignal:
    signal: Signal
    source: str
    """``f`` for a feature column, ``p`` for a probe column."""
    column: int
    """Column in the feature_values (or probe_values) passed to ``RuleSession.step``."""
    compare: Callable[[float, float], bool]


# A condition tree over signal slots: ("signal", slot) | ("all"|"any", (children...)).
Tree = tuple[str, "int | tuple[Tree, ...]"]


@dataclass(frozen=True)
class CompiledRule:
    rule: Rule
    signals: tuple[CompiledSignal, ...]
    tree: Tree


class RuleEngine:
    """Validated, compiled rules (immutable; share it between threads and requests)."""

    def __init__(
        self, rules: Sequence[Rule], probes: ProbeNames | None = None, d_sae: int | None = None
    ) -> None:
        probe_names = list(probes.names) if probes is not None else []
        probe_cols = {name: i for i, name in enumerate(probe_names)}
        enabled = [r for r in rules if r.enabled]
        probe_features = _probe_features(probes)
        features = sorted({
            s.feature for r in enabled for s in r.when.signals() if s.feature is not None
        } | set(probe_features))
        for rule in enabled:
            _check_rule(rule, d_sae, probe_cols)
        if d_sae is not None and probe_features and max(probe_features) >= d_sae:
            raise UnknownFeatureError(
                f"probes: feature {max(probe_features)} out of range (the SAE has {d_sae})")
        self._feature_cols = {f: i for i, f in enumerate(features)}
        self.signal_features: Tensor = torch.tensor(features, dtype=torch.int64)
        """Feature indices the rules and features probes read, ascending; column order of
        ``feature_values``."""
        self.probe_feature_columns: Tensor = torch.tensor(
            [self._feature_cols[f] for f in probe_features], dtype=torch.int64)
        """Columns of ``feature_values`` holding ``probes.feature_support``, in its order."""
        self.probe_names: list[str] = probe_names
        """Probe names in column order of ``probe_values``."""
        self.rules: dict[str, CompiledRule] = {}
        for rule in enabled:
            if rule.name in self.rules:
                raise RuleValidationError("rules", f"rule {rule.name!r} given twice")
            self.rules[rule.name] = self._compile(rule, probe_cols)
        self.needs_probes = any(s.source == "p" for r in self.rules.values() for s in r.signals)

    def _compile(self, rule: Rule, probe_cols: dict[str, int]) -> CompiledRule:
        signals: list[CompiledSignal] = []

        def walk(cond: Condition) -> Tree:
            if cond.signal is not None:
                s = cond.signal
                if s.feature is not None:
                    compiled = CompiledSignal(s, "f", self._feature_cols[s.feature], OPS[s.op])
                else:
                    compiled = CompiledSignal(s, "p", probe_cols[s.probe or ""], OPS[s.op])
                signals.append(compiled)
                return ("signal", len(signals) - 1)
            kind = "all" if cond.all is not None else "any"
            return (kind, tuple(walk(c) for c in (cond.all or cond.any or [])))

        tree = walk(rule.when)
        return CompiledRule(rule, tuple(signals), tree)

    def rules_for(self, policy: Policy) -> list[CompiledRule]:
        """The compiled rules a policy selects (``["*"]``: all); unknown names are skipped."""
        if not policy.monitoring:
            return []
        if policy.rules == ["*"]:
            return list(self.rules.values())
        missing = [n for n in policy.rules if n not in self.rules]
        if missing:
            logger.debug("policy %s: rules %s are not enabled or not loaded", policy.name, missing)
        return [self.rules[n] for n in policy.rules if n in self.rules]

    def new_session(self, policy: Policy) -> RuleSession:
        """Per-request evaluation state for the rules ``policy`` selects."""
        n_features, n_probes = len(self._feature_cols), len(self.probe_names)
        return RuleSession(self.rules_for(policy), n_features=n_features, n_probes=n_probes)

    def new_batch(self) -> RuleBatch:
        """Evaluation state for many requests, advanced one step at a time: open each request
        with ``batch.open(key, engine.rules_for(policy))``."""
        return RuleBatch(len(self._feature_cols), len(self.probe_names))


def _check_rule(rule: Rule, d_sae: int | None, probe_cols: dict[str, int]) -> None:
    """Refuses a feature the SAE lacks or a probe not loaded, with the rule's field path."""
    for path, s in rule.when.signal_paths("when"):
        if s.feature is not None and d_sae is not None and s.feature >= d_sae:
            raise UnknownFeatureError(f"feature {s.feature} out of range (the SAE has {d_sae})",
                                      field=f"{path}.feature", rule=rule.name)
        if s.probe is not None and s.probe not in probe_cols:
            known = ", ".join(sorted(probe_cols)) or "none"
            raise UnknownFeatureError(f"unknown probe {s.probe!r} (loaded: {known})",
                                      field=f"{path}.probe", rule=rule.name)
    steer = rule.action.steer
    for i, f in enumerate(steer.features if steer is not None else []):
        if d_sae is not None and f.feature >= d_sae:
            raise UnknownFeatureError(
                f"steer feature {f.feature} out of range (the SAE has {d_sae})",
                field=f"action.steer.features[{i}].feature", rule=rule.name)


@dataclass(frozen=True)
class RuleCheck:
    """Checks one rule against an SAE's width and the loaded probes, from plain data: picklable,
    so that a big pack is checked in a worker process, off the sidecar's GIL. Raises what
    :class:`RuleEngine` raises (``UnknownFeatureError`` with the rule's field)."""

    d_sae: int
    probe_names: tuple[str, ...] = ()
    feature_support: tuple[int, ...] = ()
    """Features the probes read (features probes), as ``ProbeSet.feature_support``."""

    @property
    def names(self) -> list[str]:
        return list(self.probe_names)

    def __call__(self, rule: Rule) -> None:
        # Compiled as enabled, so that a disabled rule is checked too before it is stored.
        enabled = rule.model_copy(update={"enabled": True})
        RuleEngine([enabled], probes=self, d_sae=self.d_sae)
