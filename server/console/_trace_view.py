"""One trace as the console draws it: tokens shaded by the signal that fired, the threshold,
each token's top features, and a small plot of the signal over the tokens. Pure.

The signal of a hit is its first evidence (the first signal that held, as its score). Its value
on each token is the one the trace recorded (`TokenRecord.signals`); a trace stored before
those were recorded falls back to the token's top-k features for a feature signal (below the
top-k it reads 0) and has no values for a probe. A windowed signal is compared after its
window: the plotted and shaded value is the window aggregate over the rule's scope, computed
with the engine's own window code; the raw value is plotted too.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from latentguard.monitors.rules import Rule, RuleHit, Signal
from latentguard.monitors.rules.windows import make_window
from latentguard.server.records import TokenRecord, TraceRecord

__all__ = ["MAX_SHOWN", "Plot", "TokenCell", "TraceView", "build_view"]

MAX_SHOWN = 4000
"""Most tokens drawn as text; a longer trace shows the stretch around the selected hit."""
PLOT_POINTS = 800
PLOT_W, PLOT_H, PAD = 720.0, 150.0, 6.0

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}


@dataclass(frozen=True)
class TokenCell:
    position: int
    text: str
    prompt: bool
    value: float | None
    """The compared value (after the window), None out of scope or unknown."""
    raw: float | None
    shade: float
    """0..1, how strongly the token is shaded."""
    holds: bool
    """The comparison with the threshold holds on this token."""
    hit: bool
    """The selected hit's rule fired on this token."""


@dataclass(frozen=True)
class Plot:
    width: float
    height: float
    lines: list[str]
    """SVG polyline point lists of the compared value (broken where it is unknown)."""
    raw_lines: list[str]
    threshold_y: float | None
    hits: list[tuple[float, float]]
    boundary_x: float | None
    """Where the prompt ends and the generation starts."""
    low: float
    high: float


@dataclass
class TraceView:
    trace: TraceRecord
    hit_index: int
    hit: RuleHit | None
    signal_name: str
    signal: Signal | None
    """The rule's signal as stored now (its threshold and window); None if no longer stored."""
    rule_version: int
    source: str
    """recorded | top-k | none: where the token values come from."""
    cells: list[TokenCell]
    first_shown: int
    plot: Plot | None
    features: dict[int, list[tuple[int, float]]] = field(default_factory=dict)
    """Position -> its top features (index, value), for the hover."""

    @property
    def threshold(self) -> float | None:
        return self.signal.threshold if self.signal is not None else None


def _find_signal(rule: Rule | None, name: str) -> Signal | None:
    if rule is None:
        return None
    return next((s for s in rule.when.signals() if s.source_name == name), None)


def _in_scope(rule: Rule | None, tok: TokenRecord) -> bool:
    scope = rule.scope if rule is not None else "both"
    return scope == "both" or (scope == "prompt") == tok.prompt


def _raw_values(tokens: Sequence[TokenRecord], name: str) -> tuple[list[float | None], str]:
    if any(name in t.signals for t in tokens):
        return [t.signals.get(name) for t in tokens], "recorded"
    if name.startswith("feature "):
        index = int(name.removeprefix("feature "))
        return [next((f.value for f in t.top_features if f.feature == index), 0.0)
                for t in tokens], "top-k"
    return [None] * len(tokens), "none"


def _compared(tokens: Sequence[TokenRecord], raw: Sequence[float | None], rule: Rule | None,
              signal: Signal | None) -> list[float | None]:
    """Each token's value as the rule compares it: in scope only, after the window."""
    window = make_window(signal.window) if signal is not None and signal.window else None
    out: list[float | None] = []
    for tok, value in zip(tokens, raw, strict=True):
        if value is None or not _in_scope(rule, tok):
            out.append(None)
        elif window is not None:
            out.append(window.push(value, tok.position)[0])
        else:
            out.append(value)
    return out


def _scale(values: Sequence[float | None], threshold: float | None) -> tuple[float, float]:
    known = [v for v in values if v is not None] + ([threshold] if threshold is not None else [])
    if not known:
        return 0.0, 1.0
    low, high = min(0.0, min(known)), max(known)
    return (low, high) if high > low else (low, low + 1.0)


def _downsample(values: Sequence[float | None], n: int) -> list[tuple[int, float | None]]:
    """At most `n` (index, value) points, keeping each bin's largest value (peaks survive)."""
    if len(values) <= n:
        return list(enumerate(values))
    out: list[tuple[int, float | None]] = []
    per = len(values) / n
    for b in range(n):
        lo, hi = int(b * per), max(int((b + 1) * per), int(b * per) + 1)
        best = max(((i, values[i]) for i in range(lo, hi) if values[i] is not None),
                   key=lambda iv: iv[1] or 0.0, default=(lo, None))
        out.append(best)
    return out


def _polylines(values: Sequence[float | None], x: Callable[[int], float],
               y: Callable[[float], float]) -> list[str]:
    lines: list[str] = []
    current: list[str] = []
    for i, v in _downsample(values, PLOT_POINTS):
        if v is None:
            if len(current) > 1:
                lines.append(" ".join(current))
            current = []
            continue
        current.append(f"{x(i):.1f},{y(v):.1f}")
    if len(current) == 1:
        current.append(current[0])  # one point still draws
    if current:
        lines.append(" ".join(current))
    return lines


def _plot(tokens: Sequence[TokenRecord], raw: Sequence[float | None],
          compared: Sequence[float | None], threshold: float | None,
          hit_positions: set[int], windowed: bool) -> Plot | None:
    if not tokens or all(v is None for v in compared):
        return None
    low, high = _scale([*compared, *(raw if windowed else [])], threshold)
    n = len(tokens)

    def x(i: int) -> float:
        return PAD + (PLOT_W - 2 * PAD) * (i / max(1, n - 1))

    def y(v: float) -> float:
        return PAD + (PLOT_H - 2 * PAD) * (1 - (v - low) / (high - low))

    hits = [(x(i), y(v)) for i, (t, v) in enumerate(zip(tokens, compared, strict=True))
            if t.position in hit_positions and v is not None]
    boundary = next((i for i, t in enumerate(tokens) if not t.prompt), None)
    return Plot(
        width=PLOT_W, height=PLOT_H, lines=_polylines(compared, x, y),
        raw_lines=_polylines(raw, x, y) if windowed else [],
        threshold_y=y(threshold) if threshold is not None else None, hits=hits[:200],
        boundary_x=x(boundary) if boundary not in (None, 0) else None, low=low, high=high)


def build_view(trace: TraceRecord, rules: Mapping[str, tuple[Rule, int]],
               hit_index: int = 0) -> TraceView:
    """The view of `trace` for its hit number `hit_index` (clamped; no hit: plain text)."""
    tokens = sorted(trace.tokens, key=lambda t: t.position)
    hit = trace.hits[max(0, min(hit_index, len(trace.hits) - 1))] if trace.hits else None
    index = trace.hits.index(hit) if hit is not None else 0
    rule, version = rules.get(hit.rule, (None, 0)) if hit is not None else (None, 0)
    name = ""
    if hit is not None:
        name = hit.evidence[0].signal if hit.evidence else ""
        if not name and rule is not None and rule.when.signals():
            name = rule.when.signals()[0].source_name
    signal = _find_signal(rule, name)
    raw, source = _raw_values(tokens, name) if name else ([None] * len(tokens), "none")
    compared = _compared(tokens, raw, rule, signal)
    threshold = signal.threshold if signal is not None else None
    low, high = _scale(compared, threshold)
    base = max(low, 0.0) if all(v is None or v >= 0 for v in compared) else low
    compare = _OPS[signal.op] if signal is not None else None
    hit_positions = {h.position for h in trace.hits if hit is not None and h.rule == hit.rule}
    cells = [
        TokenCell(position=t.position, text=t.text, prompt=t.prompt, value=v, raw=r,
                  shade=0.0 if v is None else max(0.0, min(1.0, (v - base) / (high - base))),
                  holds=v is not None and compare is not None and threshold is not None
                  and compare(v, threshold),
                  hit=t.position in hit_positions)
        for t, v, r in zip(tokens, compared, raw, strict=True)]
    first = 0
    if len(cells) > MAX_SHOWN:
        centre = next((i for i, t in enumerate(tokens) if hit and t.position == hit.position), 0)
        first = max(0, min(len(cells) - MAX_SHOWN, centre - MAX_SHOWN // 2))
    shown = cells[first:first + MAX_SHOWN]
    return TraceView(
        trace=trace, hit_index=index, hit=hit, signal_name=name, signal=signal,
        rule_version=version, source=source, cells=shown, first_shown=first,
        plot=_plot(tokens, raw, compared, threshold, hit_positions,
                   windowed=signal is not None and signal.window is not None),
        features={t.position: [(f.feature, f.value) for f in t.top_features]
                  for t in tokens[first:first + MAX_SHOWN]})
