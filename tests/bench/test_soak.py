"""The soak benchmark end to end, briefly: real sidecar process, real streams."""

from __future__ import annotations

import json
from pathlib import Path

from bench import soak


def test_a_short_soak_serves_every_stream_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    results = soak.main(["--streams", "4", "--minutes", "0.1", "--prompt", "4",
                         "--tokens", "4", "--out", str(out)])
    assert results.errors == 0 and results.requests >= 4
    assert results.steps == results.requests * 6  # prefill, 4 decode steps, end
    assert 0 < results.verdict_ms_p50 <= results.verdict_ms_p99
    assert results.rss_mb_peak >= results.rss_mb_start > 0
    assert json.loads(out.read_text())["streams"] == 4
