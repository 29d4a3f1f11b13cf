"""The store benchmark end to end, briefly: one node, then a three-node cluster, same writers."""

from __future__ import annotations

import json
from pathlib import Path

from bench import store_cluster


def test_a_short_run_writes_to_both_and_reports_the_ratios(tmp_path: Path) -> None:
    out = tmp_path / "store.json"
    results = store_cluster.main(["--seconds", "1", "--writers", "1", "--concurrency", "2",
                                  "--tokens", "4", "--batch", "4", "--warmup", "5",
                                  "--out", str(out)])
    assert results.single.writes > 0 and results.cluster.writes > 0
    assert results.single.nodes == 1 and results.cluster.nodes == 3
    assert results.measured_ratio > 0 and results.capacity_ratio > 0
    assert results.alerts.writes > 0
    assert json.loads(out.read_text())["cluster"]["nodes"] == 3
