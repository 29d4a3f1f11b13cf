"""The per-token rule session as it was before the step-level engine (`monitors.rules.batch`):
a Python loop over each token, rule and signal, with the windows of `monitors.rules.windows`.

Frozen on purpose. It is the reference the vectorised engine is tested against (hit for hit,
bit for bit, `tests/monitors/rules/test_rules_batch.py`) and the baseline `bench.rule_engine`
times it beside. Do not change its semantics here without changing them in the engine too.

Semantics, per rule:

* Only tokens in the rule's scope are seen (``prompt``: prefill rows, ``generation``: generated
  rows, ``both``); windows and consecutive runs count in-scope tokens only.
* Each signal compares its value (the current token's, or its window aggregate) with the
  threshold; with ``consecutive: N`` the comparison must hold on N in-scope tokens in a row.
* ``all`` / ``any`` combine the signals of the same token.
* A rule fires once per crossing: a hit is emitted on the token where the condition becomes
  true; no further hit while it stays true; it can fire again after it has been false on at
  least one in-scope token.
* A rule with ``check: end`` is not checked per token: its windows see every in-scope token,
  and ``finish()`` checks it once, on their values at the end (a hit at the last in-scope
  token); a request with no in-scope token gives it nothing to check.
* A hit's ``score`` is the value of the first signal that holds (depth first); ``evidence``
  lists every holding signal with the position that explains it (for a ``max`` window, the
  token that holds the maximum) and its value.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from torch import Tensor

from latentguard.monitors.errors import ShapeError
from latentguard.monitors.rules.hits import Evidence, RuleHit
from latentguard.monitors.rules.schema import Signal
from latentguard.monitors.rules.windows import WindowAgg, make_window

if TYPE_CHECKING:
    from latentguard.monitors.rules.engine import CompiledRule, CompiledSignal, RuleEngine, Tree
    from latentguard.monitors.rules.schema import Policy

__all__ = ["ReferenceSession", "reference_session"]


class _SignalState:
    __slots__ = ("compiled", "window", "run", "run_start")

    def __init__(self, compiled: CompiledSignal) -> None:
        self.compiled = compiled
        w = compiled.signal.window
        self.window: WindowAgg | None = make_window(w) if w is not None else None
        self.run = 0
        self.run_start = 0

    def update(self, value: float, position: int) -> tuple[bool, float, int]:
        """Feed one in-scope token; (holds, aggregated value, position of interest)."""
        if self.window is not None:
            value, where = self.window.push(value, position)
        else:
            where = position
        sig = self.compiled.signal
        if self.compiled.compare(value, sig.threshold):
            if self.run == 0:
                self.run_start = position
            self.run += 1
        else:
            self.run = 0
        return self.run >= sig.consecutive, value, where


class _RuleState:
    __slots__ = ("compiled", "signals", "active", "prompt", "generation", "at_end", "last")

    def __init__(self, compiled: CompiledRule) -> None:
        self.compiled = compiled
        self.signals = [_SignalState(s) for s in compiled.signals]
        self.active = False
        scope = compiled.rule.scope
        self.prompt = scope in ("prompt", "both")
        self.generation = scope in ("generation", "both")
        self.at_end = compiled.rule.check == "end"
        self.last: tuple[list[tuple[bool, float, int]], int] | None = None
        """An end rule's signal results and position at its latest in-scope token."""


class ReferenceSession:
    """Evaluation state of one request, token by token. Not thread-safe."""

    def __init__(self, rules: Sequence[CompiledRule], n_features: int, n_probes: int) -> None:
        self._rules = [_RuleState(r) for r in rules]
        self.n_features = n_features
        self.n_probes = n_probes
        self._needs_probes = any(s.source == "p" for r in rules for s in r.signals)

    @property
    def rule_names(self) -> list[str]:
        return [r.compiled.rule.name for r in self._rules]

    def step(
        self,
        feature_values: Tensor | np.ndarray,
        probe_values: Tensor | np.ndarray | None,
        positions: Sequence[int],
        is_prompt: Sequence[bool],
    ) -> list[RuleHit]:
        """Feed the request's next rows (in order); return the rules that fired.

        Args:
            feature_values: ``[n, len(engine.signal_features)]`` activations of the rule features.
            probe_values: ``[n, len(engine.probe_names)]`` probe scores, or None if no rule
                uses a probe.
            positions: token position of each row.
            is_prompt: True for prompt (prefill) rows, False for generated rows.
        """
        n = len(positions)
        fv = _rows(feature_values, "feature_values", n, self.n_features)
        pv: list[list[float]] | None = None
        if probe_values is not None:
            pv = _rows(probe_values, "probe_values", n, self.n_probes)
        elif self._needs_probes and n:
            raise ShapeError("probe_values", "required: a rule of this policy uses a probe")
        if len(is_prompt) != n:
            raise ShapeError("is_prompt", f"expected {n} entries, got {len(is_prompt)}")
        hits: list[RuleHit] = []
        for t in range(n):
            position, prompt = int(positions[t]), bool(is_prompt[t])
            for state in self._rules:
                if not (state.prompt if prompt else state.generation):
                    continue
                results = []
                for sig in state.signals:
                    c = sig.compiled
                    value = fv[t][c.column] if c.source == "f" else pv[t][c.column]  # type: ignore[index]
                    results.append(sig.update(value, position))
                if state.at_end:
                    state.last = (results, position)
                    continue
                holds = _evaluate(state.compiled.tree, results)
                if holds and not state.active:
                    hits.append(_hit(state, results, position))
                state.active = holds
        return hits

    def finish(self) -> list[RuleHit]:
        """The request ended: check the end rules (``check: end``) once, on their windows over
        the request. Call it once, after the last ``step``."""
        hits: list[RuleHit] = []
        for state in self._rules:
            if state.at_end and state.last is not None:
                results, position = state.last
                if _evaluate(state.compiled.tree, results):
                    hits.append(_hit(state, results, position))
                state.last = None  # a second finish() must not fire it again
        return hits


def reference_session(engine: RuleEngine, policy: Policy) -> ReferenceSession:
    """The reference session of ``policy``'s rules: what ``engine.new_session`` returned before
    the step-level engine."""
    return ReferenceSession(engine.rules_for(policy), n_features=len(engine.signal_features),
                            n_probes=len(engine.probe_names))


def _rows(values: Tensor | np.ndarray, field: str, n: int, width: int) -> list[list[float]]:
    shape = tuple(values.shape)
    if len(shape) != 2 or shape[0] != n or shape[1] != width:
        raise ShapeError(field, f"expected shape [{n}, {width}], got {list(shape)}")
    if isinstance(values, Tensor):
        if not values.is_floating_point():
            raise ShapeError(field, f"expected floating point values, got {values.dtype}")
        out: list[list[float]] = values.detach().cpu().double().tolist()
        return out
    rows: list[list[float]] = np.asarray(values, dtype=np.float64).tolist()
    return rows


def _evaluate(tree: Tree, results: list[tuple[bool, float, int]]) -> bool:
    kind, arg = tree
    if isinstance(arg, int):
        return results[arg][0]
    if kind == "all":
        return all(_evaluate(c, results) for c in arg)
    return any(_evaluate(c, results) for c in arg)


def _describe(sig: Signal, value: float, where: int, run_start: int) -> str:
    text = sig.source_name
    w = sig.window
    if w is not None:
        what = f"count of tokens > {w.above:g}" if w.agg == "count" else w.agg
        text += (f" {what} over the last {w.size} tokens" if w.size is not None
                 else f" {what} over the request's tokens")
    text += f" = {value:.4g} {sig.op} {sig.threshold:g}"
    if w is None or w.size is not None or w.agg == "max":  # a whole-request sum has no position
        text += f" at position {where}"
    if sig.consecutive > 1:
        text += f" for {sig.consecutive}+ consecutive tokens since position {run_start}"
    return text


def _hit(state: _RuleState, results: list[tuple[bool, float, int]], position: int) -> RuleHit:
    rule = state.compiled.rule
    evidence = []
    parts = []
    for sig_state, (holds, value, where) in zip(state.signals, results, strict=True):
        if holds:
            sig = sig_state.compiled.signal
            evidence.append(Evidence(signal=sig.source_name, position=where, value=float(value)))
            parts.append(_describe(sig, value, where, sig_state.run_start))
    when = "at the end of the request" if state.at_end else f"at position {position}"
    explanation = f"rule {rule.name} ({rule.severity}) fired {when}: " + "; ".join(parts)
    return RuleHit(
        rule=rule.name,
        severity=rule.severity,
        action=rule.action,
        position=position,
        score=evidence[0].value if evidence else 0.0,
        explanation=explanation,
        evidence=tuple(evidence),
    )
