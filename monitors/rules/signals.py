"""The rule signals of a batch of rows, computed as the sidecar computes them.

One encode gives the rule features (``engine.signal_features``), the probes score the rows (a
features probe reads its columns of that same encode); offline tools (``latentguard eval`` and
``calibrate``) call this so their numbers come from the code path that serves, not a copy of it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from latentguard.monitors.probes import ProbeSet
from latentguard.monitors.rules.engine import CompiledSignal, RuleEngine
from latentguard.monitors.rules.windows import make_window
from latentguard.monitors.sae import SAE

__all__ = ["probe_scores", "rule_signals", "signal_series"]


def probe_scores(engine: RuleEngine, probes: ProbeSet | None, rows: Tensor,
                 selected: Tensor) -> Tensor | None:
    """Probe scores ``[n, len(engine.probe_names)]`` of ``rows``, or None without probes;
    ``selected`` holds the ``engine.signal_features`` columns of the rows' encode."""
    if probes is None:
        return None
    return probes.score(
        rows, selected[:, engine.probe_feature_columns] if probes.reads_features else None)


@torch.inference_mode()
def rule_signals(sae: SAE, engine: RuleEngine, probes: ProbeSet | None,
                 rows: Tensor) -> tuple[Tensor, Tensor | None]:
    """``(feature_values, probe_values)`` of residual rows, as ``RuleSession.step`` takes them."""
    selected = sae.encode_for_monitor(rows, engine.signal_features, 1).selected
    return selected, probe_scores(engine, probes, rows, selected)


def signal_series(signal: CompiledSignal, feature_values: Tensor,
                  probe_values: Tensor | None) -> list[float]:
    """The value a rule session compares with the signal's threshold on each token: the
    token's own value, or its window aggregate (the same window code as the session)."""
    values = feature_values if signal.source == "f" else probe_values
    if values is None:
        raise ValueError(f"{signal.signal.source_name}: no probe values")
    column: Sequence[float] = values[:, signal.column].double().tolist()
    window = signal.signal.window
    if window is None:
        return list(column)
    agg = make_window(window)
    return [agg.push(v, i)[0] for i, v in enumerate(column)]
