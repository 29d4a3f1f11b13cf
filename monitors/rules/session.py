"""Per-request rule evaluation: a view of one request in its own `RuleBatch`.

For code that follows one request at a time (``latentguard eval`` and ``calibrate``, tests);
the sidecar advances all requests of a step at once in one `RuleBatch`. The semantics are in
`monitors.rules.batch`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from torch import Tensor

from latentguard.monitors.errors import ShapeError
from latentguard.monitors.rules.batch import RuleBatch, RuleSpan, as_matrix
from latentguard.monitors.rules.hits import RuleHit

if TYPE_CHECKING:
    from latentguard.monitors.rules.engine import CompiledRule

__all__ = ["RuleSession"]


class RuleSession:
    """Evaluation state of one request. Not thread-safe: one request's steps arrive in order."""

    def __init__(self, rules: Sequence[CompiledRule], n_features: int, n_probes: int) -> None:
        self._names = [r.rule.name for r in rules]
        self.n_features = n_features
        self.n_probes = n_probes
        self._batch = RuleBatch(n_features, n_probes)
        self._batch.open(0, rules)
        self._needs_probes = self._batch.needs_probes(0)

    @property
    def rule_names(self) -> list[str]:
        return list(self._names)

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
        fv = as_matrix(feature_values, "feature_values", n, self.n_features)
        pv = None
        if probe_values is not None:
            pv = as_matrix(probe_values, "probe_values", n, self.n_probes)
        elif self._needs_probes and n:
            raise ShapeError("probe_values", "required: a rule of this policy uses a probe")
        if len(is_prompt) != n:
            raise ShapeError("is_prompt", f"expected {n} entries, got {len(is_prompt)}")
        spans, lo = [], 0
        for hi in range(1, n + 1):  # one span per run of prompt rows or generated rows
            if hi == n or bool(is_prompt[hi]) != bool(is_prompt[lo]):
                spans.append(RuleSpan(0, lo, positions[lo:hi], bool(is_prompt[lo])))
                lo = hi
        return [h for hits in self._batch.step(fv, pv, spans) for h in hits]

    def finish(self) -> list[RuleHit]:
        """The request ended: check the end rules (``check: end``) once, on their windows over
        the request. Call it once, after the last ``step``."""
        return self._batch.finish(0)
