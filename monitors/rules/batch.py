"""Rule evaluation for every request of a step at once (`RuleBatch`).

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

How: the requests that share a rule list share a pool of state arrays, one row (slot) per
request: window aggregates (`monitors.rules.aggregates`), consecutive runs, whether each rule
holds. A step groups its spans by pool, token kind and length (a decode step is one group of
one-row spans; a prefill chunk one group of one long span) and advances each group in one pass
over a ``[requests, tokens, signals]`` block. Hits are exactly the frozen per-token
reference's (`monitors.rules.reference`), bit for bit.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from latentguard.monitors.errors import ShapeError
from latentguard.monitors.rules.aggregates import WindowArrays, window_arrays
from latentguard.monitors.rules.hits import Evidence, RuleHit
from latentguard.monitors.rules.plan import SCOPES, KindPlan, RulePlan, evaluate

if TYPE_CHECKING:
    from latentguard.monitors.rules.engine import CompiledRule

__all__ = ["RuleBatch", "RuleSpan"]

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


@dataclass(frozen=True)
class RuleSpan:
    """One request's rows in a step: ``values[row_start : row_start + len(positions)]``."""

    key: Hashable
    row_start: int
    positions: Sequence[int]
    prompt: bool
    """Prompt (prefill) rows, or generated rows."""


class _Pool:
    """State of the open requests of one rule list, a row (slot) per request."""

    def __init__(self, plan: RulePlan, capacity: int = 8) -> None:
        self.plan, self.capacity = plan, capacity
        r, s = len(plan.rules), plan.n_signals
        self._spec: dict[str, tuple[int, Any, Any]] = {
            "active": (r, np.bool_, False), "run": (s, np.int64, 0),
            "run_start": (s, np.int64, 0),
            # Latest in-scope position per scope (SCOPES), for end rules; -1: none since the
            # request started or was last finished.
            "last_pos": (len(SCOPES), np.int64, -1)}
        self.a: dict[str, npt.NDArray[Any]] = {
            k: np.full((capacity, n), fill, dtype) for k, (n, dtype, fill) in self._spec.items()}
        self.windows: list[WindowArrays] = []
        for g in plan.groups:
            arrays = window_arrays(g.window, g.signals.size, g.above, capacity)
            assert arrays is not None
            self.windows.append(arrays)
        self.free = list(range(capacity - 1, -1, -1))

    def acquire(self) -> int:
        if not self.free:
            old, self.capacity = self.capacity, self.capacity * 2
            for k, (n, dtype, fill) in self._spec.items():
                grown = np.full((self.capacity, n), fill, dtype)
                grown[:old] = self.a[k]
                self.a[k] = grown
            for w in self.windows:
                w.grow(self.capacity)
            self.free = list(range(self.capacity - 1, old - 1, -1))
        slot = self.free.pop()
        for k, (_, _, fill) in self._spec.items():
            self.a[k][slot] = fill
        for w in self.windows:
            w.reset(slot)
        return slot


class RuleBatch:
    """The rule state of many requests (each opened with its rule list under a key), advanced
    one step at a time. Not thread-safe: a stream's steps arrive in order."""

    def __init__(self, n_features: int, n_probes: int) -> None:
        self.n_features, self.n_probes = n_features, n_probes
        self._pools: dict[tuple[str, ...], _Pool] = {}
        self._open: dict[Hashable, tuple[_Pool, int]] = {}

    def __contains__(self, key: object) -> bool:
        return key in self._open

    def __len__(self) -> int:
        return len(self._open)

    def open(self, key: Hashable, rules: Sequence[CompiledRule]) -> None:
        """Starts a request's state for ``rules`` (of one engine; names unique), replacing any
        state under ``key``."""
        self.close(key)
        names = tuple(c.rule.name for c in rules)
        pool = self._pools.get(names)
        if pool is None:
            pool = self._pools[names] = _Pool(RulePlan(rules, self.n_features))
        self._open[key] = (pool, pool.acquire())

    def close(self, key: Hashable) -> None:
        """Drops a request's state (its end rules unchecked: see `finish`)."""
        if key in self._open:
            pool, slot = self._open.pop(key)
            pool.free.append(slot)

    def needs_probes(self, key: Hashable) -> bool:
        return self._open[key][0].plan.needs_probes

    def finish(self, key: Hashable) -> list[RuleHit]:
        """The request ended: checks its end rules (``check: end``) once, on their windows over
        the request; a second call finds nothing to check. The state stays open."""
        pool, slot = self._open[key]
        plan = pool.plan
        last = pool.a["last_pos"][slot].tolist()
        pool.a["last_pos"][slot] = -1
        current: dict[int, tuple[list[float], list[int] | None]] = {}
        hits = []
        for r in plan.end_rules:
            compiled = plan.rules[r]
            position = last[SCOPES.index(compiled.rule.scope)]
            if position < 0:  # no in-scope token: nothing to check
                continue
            holds, values, wheres = [], [], []
            for k, c in enumerate(compiled.signals):  # every signal of an end rule has a window
                g, j = plan.window_of[plan.first[r] + k]
                if g not in current:
                    current[g] = pool.windows[g].current(slot)
                value, at = current[g]
                holds.append(c.compare(value[j], c.signal.threshold))
                values.append(value[j])
                wheres.append(at[j] if at is not None else position)
            if evaluate(compiled.tree, holds):
                hits.append(make_hit(compiled, holds, values, wheres, None, position,
                                     at_end=True))
        return hits

    def step(self, feature_values: Tensor | np.ndarray, probe_values: Tensor | np.ndarray | None,
             spans: Sequence[RuleSpan]) -> list[list[RuleHit]]:
        """Feeds each span's rows (spans of one request in order); returns each span's hits.

        Args:
            feature_values: ``[n, n_features]`` values of the rule features for all rows.
            probe_values: ``[n, n_probes]`` probe scores, or None if no open rule list of the
                spans uses a probe.
            spans: the rows of each request (a key may come more than once).
        """
        out: list[list[RuleHit]] = [[] for _ in spans]
        if not spans:
            return out
        fv = as_matrix(feature_values, "feature_values", None, self.n_features)
        n = fv.shape[0]
        values = fv
        if probe_values is not None:
            pv = as_matrix(probe_values, "probe_values", n, self.n_probes)
            values = np.concatenate([fv, pv], axis=1)  # float32 unless one is float64
        groups: dict[tuple[int, int, bool, int], list[int]] = {}
        rounds: dict[Hashable, int] = {}
        for i, span in enumerate(spans):
            length = len(span.positions)
            if length == 0:
                continue
            pool = self._open[span.key][0]
            if span.row_start < 0 or span.row_start + length > n:
                raise ShapeError("spans", f"rows {span.row_start}..{span.row_start + length} "
                                 f"outside the {n} rows given")
            if probe_values is None and pool.plan.needs_probes:
                raise ShapeError("probe_values", "required: a rule of this policy uses a probe")
            k = rounds[span.key] = rounds.get(span.key, -1) + 1  # a key's spans in order
            groups.setdefault((k, id(pool), span.prompt, length), []).append(i)
        for (_, _, prompt, length), members in sorted(groups.items(), key=lambda g: g[0][0]):
            pool = self._open[spans[members[0]].key][0]
            kind = pool.plan.kinds[prompt]
            if kind.empty:
                continue
            slots = np.array([self._open[spans[i].key][1] for i in members], dtype=np.int64)
            starts = np.array([spans[i].row_start for i in members], dtype=np.int64)
            if length == 1:
                positions = np.array([spans[i].positions for i in members], dtype=np.int64)
                x = values[starts[:, None], kind.value_cols][:, None]
            else:
                positions = np.stack([np.asarray(spans[i].positions, dtype=np.int64)
                                      for i in members])
                x = values[(starts[:, None] + np.arange(length))[:, :, None], kind.value_cols]
            block: F64 = x.astype(np.float64)  # from float32: exact, the reference's values
            for b, hits in _advance(pool, kind, slots, block, positions):
                out[members[b]].extend(hits)
        return out


def as_matrix(values: Tensor | np.ndarray, field: str, n: int | None,
              width: int) -> npt.NDArray[np.floating[Any]]:
    """``values`` as a float32 or float64 ``[n, width]`` array: a view of a float32/float64
    tensor or array (other floats, and integers in an array, are converted to float64)."""
    shape = tuple(values.shape)
    if len(shape) != 2 or (n is not None and shape[0] != n) or shape[1] != width:
        rows = n if n is not None else "rows"
        raise ShapeError(field, f"expected shape [{rows}, {width}], got {list(shape)}")
    if isinstance(values, Tensor):
        if not values.is_floating_point():
            raise ShapeError(field, f"expected floating point values, got {values.dtype}")
        values = values.detach().cpu()
        if values.dtype not in (torch.float32, torch.float64):
            values = values.double()
        out: npt.NDArray[np.floating[Any]] = values.numpy()
        return out
    if values.dtype in (np.float32, np.float64):
        return values
    return np.asarray(values, dtype=np.float64)


def _advance(pool: _Pool, kind: KindPlan, slots: I64, x: F64,
             positions: I64) -> list[tuple[int, list[RuleHit]]]:
    """One pass of a group: ``x [B, L, K]`` the columns' values of each slot's next ``L``
    tokens. Updates the slots' state; returns (row in the group, hits) where rules fired."""
    a, length = pool.a, x.shape[1]
    agg = x  # the group's own copy: windows write their aggregates over their columns
    at: list[tuple[I64, I64]] = []
    for g, cols in kind.windows:
        value, where = pool.windows[g].advance(slots, x[:, :, cols], positions)
        agg[:, :, cols] = value
        if where is not None:
            at.append((cols, where))
    signed = agg * kind.sign
    holds = (signed > kind.threshold if kind.all_strict
             else np.where(kind.strict, signed > kind.threshold, signed >= kind.threshold))
    runs = start0 = None
    if kind.runs.size:
        run0 = a["run"][slots[:, None], kind.run_signals]
        start0 = a["run_start"][slots[:, None], kind.run_signals]
        if length == 1:
            ok = holds[:, 0, kind.runs]
            end = np.where(ok, run0 + 1, 0)
            runs = end[:, None]
            new_start = np.where(ok & (run0 == 0), positions, start0)
        else:
            t = np.arange(length)[None, :, None]
            last_false = np.maximum.accumulate(np.where(holds[:, :, kind.runs], -1, t), axis=1)
            runs = np.where(last_false >= 0, t - last_false, t + 1 + run0[:, None, :])
            end = runs[:, -1]
            begin = length - end  # the token the run now going began on (< 0: earlier)
            began = np.take_along_axis(positions, np.clip(begin, 0, length - 1), axis=1)
            new_start = np.where((end > 0) & (begin >= 0), began, start0)
        holds[:, :, kind.runs] = runs >= kind.run_need
        a["run"][slots[:, None], kind.run_signals] = end
        a["run_start"][slots[:, None], kind.run_signals] = new_start
    if kind.has_end:
        a["last_pos"][slots[:, None], kind.scopes] = positions[:, -1:]
    if not kind.token_rules.size:
        return []
    rule_holds = kind.token_trees(holds)
    before = a["active"][slots[:, None], kind.token_rules]
    if length == 1:
        fired = rule_holds[:, 0] & ~before
        a["active"][slots[:, None], kind.token_rules] = rule_holds[:, 0]
        if not fired.any():
            return []
        fired = fired[:, None]
    else:
        fired = rule_holds & ~np.concatenate([before[:, None], rule_holds[:, :-1]], axis=1)
        a["active"][slots[:, None], kind.token_rules] = rule_holds[:, -1]
        if not fired.any():
            return []
    where_all = np.repeat(positions[:, :, None], x.shape[2], axis=2)
    for cols, where in at:
        where_all[:, :, cols] = where
    found: dict[int, list[RuleHit]] = {}
    run_col = {int(c): j for j, c in enumerate(kind.runs.tolist())}
    for b, tok, r in zip(*(v.tolist() for v in np.nonzero(fired)), strict=True):
        compiled = pool.plan.rules[int(kind.token_rules[r])]
        lo = int(kind.token_first[r])
        hi = lo + len(compiled.signals)
        starts: list[int] | None = None
        if runs is not None and start0 is not None:
            starts = []
            for c in range(lo, hi):
                j = run_col.get(c)
                if j is None or not runs[b, tok, j]:  # told only for a signal that holds
                    starts.append(0)
                    continue
                first = tok - int(runs[b, tok, j]) + 1
                starts.append(int(positions[b, first]) if first >= 0 else int(start0[b, j]))
        found.setdefault(b, []).append(make_hit(
            compiled, holds[b, tok, lo:hi].tolist(), agg[b, tok, lo:hi].tolist(),
            where_all[b, tok, lo:hi].tolist(), starts, int(positions[b, tok]), at_end=False))
    return list(found.items())


def _describe(compiled: CompiledRule, slot: int, value: float, where: int,
              run_start: int) -> str:
    sig = compiled.signals[slot].signal
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


def make_hit(compiled: CompiledRule, holds: Sequence[bool], values: Sequence[float],
             wheres: Sequence[int], run_starts: Sequence[int] | None, position: int, *,
             at_end: bool) -> RuleHit:
    """The hit of a rule whose signals gave ``holds``/``values``/``wheres`` (rule order)."""
    rule = compiled.rule
    evidence, parts = [], []
    for slot, (ok, value, where) in enumerate(zip(holds, values, wheres, strict=True)):
        if ok:
            evidence.append(Evidence.model_construct(  # checked values: no validation
                signal=compiled.signals[slot].signal.source_name, position=int(where),
                value=float(value)))
            start = run_starts[slot] if run_starts is not None else 0
            parts.append(_describe(compiled, slot, float(value), int(where), start))
    when = "at the end of the request" if at_end else f"at position {position}"
    explanation = f"rule {rule.name} ({rule.severity}) fired {when}: " + "; ".join(parts)
    return RuleHit.model_construct(
        rule=rule.name, severity=rule.severity, action=rule.action, position=position,
        score=evidence[0].value if evidence else 0.0, explanation=explanation,
        evidence=tuple(evidence))
