"""A rule list compiled into arrays: every rule's signals side by side, what each kind of token
(prompt or generated) updates, and the rules' ``all``/``any`` trees as reductions over signal
columns.

A plan's signals are its rules' signals in rule order, each rule's depth first (so a rule's
signals are contiguous). A token kind sees the signals of the rules whose scope holds it, in
the same order: its "columns".
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from latentguard.monitors.rules.schema import Window

if TYPE_CHECKING:
    from latentguard.monitors.rules.engine import CompiledRule, CompiledSignal, Tree

__all__ = ["SCOPES", "KindPlan", "RulePlan", "Trees", "WindowGroup", "evaluate"]

SCOPES = ("prompt", "generation", "both")

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
Bool = npt.NDArray[np.bool_]


def evaluate(tree: Tree, holds: Sequence[bool]) -> bool:
    """One token's tree, on its signals' results (rule-local signal slots)."""
    kind, arg = tree
    if isinstance(arg, int):
        return holds[arg]
    if kind == "all":
        return all(evaluate(c, holds) for c in arg)
    return any(evaluate(c, holds) for c in arg)


def _flat(tree: Tree) -> tuple[str, list[int]] | None:
    """(``any``/``all``, slots) of a signal or a flat combinator of signals; None if nested."""
    kind, arg = tree
    if isinstance(arg, int):
        return "any", [arg]
    slots = [c[1] for c in arg if isinstance(c[1], int)]
    return (kind, slots) if len(slots) == len(arg) else None


def _offset(tree: Tree, offset: int) -> Tree:
    kind, arg = tree
    if isinstance(arg, int):
        return kind, arg + offset
    return kind, tuple(_offset(c, offset) for c in arg)


def _reduce(tree: Tree, holds: Bool) -> Bool:
    kind, arg = tree
    if isinstance(arg, int):
        out: Bool = holds[..., arg]
        return out
    op = np.logical_and if kind == "all" else np.logical_or
    return functools.reduce(op, (_reduce(c, holds) for c in arg))


class Trees:
    """Rule trees over a token kind's columns: ``holds [..., K] -> [..., R]``. Flat rules (a
    signal, or ``any``/``all`` of signals) are one ``reduceat`` per combinator; nested trees
    are reduced node by node."""

    def __init__(self, trees: Sequence[tuple[Tree, int]], width: int) -> None:
        """``trees``: each rule's tree and the column of its first signal."""
        self.n = len(trees)
        self._flat: list[tuple[Any, I64, I64, I64]] = []
        self._nested: list[tuple[int, Tree]] = []
        by_kind: dict[str, tuple[list[int], list[int], list[int]]] = {}
        for r, (tree, offset) in enumerate(trees):
            flat = _flat(tree)
            if flat is None:
                self._nested.append((r, _offset(tree, offset)))
                continue
            cols, starts, rules = by_kind.setdefault(flat[0], ([], [], []))
            starts.append(len(cols))
            cols.extend(offset + s for s in flat[1])
            rules.append(r)
        for kind, (cols, starts, rules) in by_kind.items():
            op = np.logical_and if kind == "all" else np.logical_or
            self._flat.append((op, np.array(cols, np.int64), np.array(starts, np.int64),
                               np.array(rules, np.int64)))
        # The usual pack: every rule flat and of one kind, its columns in order.
        self._direct = (not self._nested and len(self._flat) == 1
                        and np.array_equal(self._flat[0][1], np.arange(width)))

    def __call__(self, holds: Bool) -> Bool:
        if self._direct:
            op, _, starts, _ = self._flat[0]
            direct: Bool = op.reduceat(holds, starts, axis=-1)
            return direct
        out = np.empty((*holds.shape[:-1], self.n), dtype=np.bool_)
        for op, cols, starts, rules in self._flat:
            out[..., rules] = op.reduceat(holds[..., cols], starts, axis=-1)
        for r, tree in self._nested:
            out[..., r] = _reduce(tree, holds)
        return out


@dataclass(frozen=True)
class WindowGroup:
    """Signals of one window (kind and size) and one scope: one set of window arrays."""

    window: Window
    signals: I64
    """Plan signal ids."""
    above: F64
    """Each signal's ``above`` (count windows; 0 otherwise)."""


@dataclass(frozen=True)
class KindPlan:
    """What a prompt token, or a generated one, updates."""

    signals: I64
    """Plan signal ids of the columns."""
    value_cols: I64
    """Each column's column in the step's ``[features | probes]`` values."""
    sign: F64
    """+1 for ``>``/``>=``, -1 for ``<``/``<=`` (so every comparison is a "greater")."""
    threshold: F64
    """``sign * threshold``."""
    strict: Bool
    windows: tuple[tuple[int, I64], ...]
    """(window group, its columns) for the groups this kind updates."""
    runs: I64
    """Columns with ``consecutive > 1``."""
    run_signals: I64
    """Their plan signal ids."""
    run_need: I64
    """Their ``consecutive``."""
    token_rules: I64
    """Plan rule ids of the per-token rules in scope."""
    token_first: I64
    """Column of each one's first signal."""
    token_trees: Trees
    has_end: bool
    """Whether an end rule is in scope (then the last in-scope position is kept)."""
    scopes: I64
    """The scopes that see this kind (``SCOPES`` indices)."""
    all_strict: bool

    @property
    def empty(self) -> bool:
        return self.signals.size == 0


def _above(window: Window | None) -> float:
    return window.above if window is not None and window.above is not None else 0.0


def _ids(values: Sequence[int]) -> I64:
    return np.array(values, dtype=np.int64)


class RulePlan:
    """A rule list (a policy's compiled rules) as arrays; immutable."""

    def __init__(self, rules: Sequence[CompiledRule], n_features: int) -> None:
        self.rules = tuple(rules)
        self.first: list[int] = []
        """Plan signal id of each rule's first signal."""
        signals: list[CompiledSignal] = []
        for compiled in self.rules:
            self.first.append(len(signals))
            signals.extend(compiled.signals)
        self.n_signals = len(signals)
        self.end_rules = [r for r, c in enumerate(self.rules) if c.rule.check == "end"]
        self.needs_probes = any(s.source == "p" for s in signals)
        scope_of: list[str] = [c.rule.scope for c in self.rules for _ in c.signals]
        groups: dict[tuple[str, Window], list[int]] = {}
        for i, s in enumerate(signals):
            w = s.signal.window
            if w is not None:  # one group per window kind and size (``above`` is per signal)
                key = w.model_copy(update={"above": 0.0 if w.agg == "count" else None})
                groups.setdefault((scope_of[i], key), []).append(i)
        self.groups = [WindowGroup(w, _ids(ids), np.array(
            [_above(signals[i].signal.window) for i in ids], dtype=np.float64))
            for (_, w), ids in groups.items()]
        group_scope = [scope for scope, _ in groups]
        self.window_of: dict[int, tuple[int, int]] = {
            int(i): (g, j) for g, group in enumerate(self.groups)
            for j, i in enumerate(group.signals.tolist())}
        """Plan signal id -> (window group, index in it), for windowed signals."""
        self.kinds = {prompt: self._kind(signals, scope_of, group_scope, prompt, n_features)
                      for prompt in (True, False)}

    def _kind(self, signals: Sequence[CompiledSignal], scope_of: list[str], group_scope: list[str],
              prompt: bool, n_features: int) -> KindPlan:
        seen = ("prompt", "both") if prompt else ("generation", "both")
        ids = [i for i in range(self.n_signals) if scope_of[i] in seen]
        col = {sig: c for c, sig in enumerate(ids)}
        sig = [signals[i] for i in ids]
        sign = np.array([1.0 if s.signal.op in (">", ">=") else -1.0 for s in sig])
        runs = [c for c, s in enumerate(sig) if s.signal.consecutive > 1]
        in_scope = [r for r, c in enumerate(self.rules) if c.rule.scope in seen]
        token = [r for r in in_scope if self.rules[r].rule.check != "end"]
        return KindPlan(
            signals=_ids(ids),
            value_cols=_ids([s.column + (n_features if s.source == "p" else 0) for s in sig]),
            sign=sign,
            threshold=sign * np.array([s.signal.threshold for s in sig], dtype=np.float64),
            strict=np.array([s.signal.op in (">", "<") for s in sig], dtype=np.bool_),
            windows=tuple((g, _ids([col[i] for i in group.signals.tolist()]))
                          for g, group in enumerate(self.groups) if group_scope[g] in seen),
            runs=_ids(runs), run_signals=_ids([ids[c] for c in runs]),
            run_need=_ids([sig[c].signal.consecutive for c in runs]),
            token_rules=_ids(token), token_first=_ids([col[self.first[r]] for r in token]),
            token_trees=Trees([(self.rules[r].tree, col[self.first[r]]) for r in token],
                              len(ids)),
            has_end=any(self.rules[r].rule.check == "end" for r in in_scope),
            scopes=_ids([SCOPES.index(scope) for scope in seen]),
            all_strict=all(s.signal.op in (">", "<") for s in sig),
        )
