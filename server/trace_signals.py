"""Each token's own values of the signals the rules read, for the trace (`TokenRecord.signals`).

The review console shades a trace's tokens by the signal that fired (a feature or a probe);
features below a token's top-k and probe scores are otherwise not in the trace.
"""

from __future__ import annotations

import torch
from torch import Tensor

from latentguard.monitors.rules import RuleEngine

__all__ = ["rule_signal_values"]


def rule_signal_values(engine: RuleEngine | None, selected: Tensor,
                       probe_values: Tensor | None) -> tuple[list[str], list[list[float]]]:
    """The names of the signals the engine's rules read (``feature 3``, ``probe x``: the names
    of hit evidence) and each row's own values of them, rounded to 4 decimals for the trace
    (one list per row, empty without rules).

    ``selected`` holds the ``engine.signal_features`` columns of the rows' encode and
    ``probe_values`` the probe scores, as `RuleSession.step` takes them.
    """
    nothing: list[list[float]] = [[] for _ in range(selected.shape[0])]
    if engine is None:
        return [], nothing
    features: dict[str, int] = {}
    probes: dict[str, int] = {}
    for rule in engine.rules.values():
        for s in rule.signals:
            (features if s.source == "f" else probes)[s.signal.source_name] = s.column
    if probe_values is None:
        probes = {}
    if not features and not probes:
        return [], nothing
    parts = [selected[:, list(features.values())]]
    if probes:
        assert probe_values is not None
        parts.append(probe_values[:, list(probes.values())].to(selected.dtype))
    values: list[list[float]] = torch.cat(parts, dim=1).tolist()
    return [*features, *probes], [[round(v, 4) for v in row] for row in values]
