"""The GPU check's script runs end to end (tiny widths, CPU, eager) and reports every mode."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from bench import gpu_tap


def test_smoke_run_reports_every_mode_and_the_wire_bytes(tmp_path: Path) -> None:
    out = tmp_path / "gpu_tap.json"
    assert gpu_tap.main(["--device", "cpu", "--tiny", "--no-compile", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [r["batch"] for r in report["results"]] == [1, 4]
    for r in report["results"]:
        assert set(r["ms"]) == {"plain", "split", "features", "rows"}
        assert all(v > 0 for v in r["ms"].values())
    # 8 top-k (fp16 value + int32 index), 4 columns and 2 probe scores (fp32) vs 64 fp32.
    assert report["wire_bytes_per_token"] == {"features": 8 * 6 + 16 + 8, "rows": 256}


def test_split_pieces_compute_the_same_step_as_the_whole_stack() -> None:
    args = gpu_tap.parser().parse_args(["--device", "cpu", "--tiny", "--dtype", "fp32"])
    for key, value in gpu_tap.TINY.items():
        setattr(args, key, value)
    whole, first, second, encode = gpu_tap.build(args, torch.device("cpu"), torch.float32)
    kv = gpu_tap.caches(args, 3, torch.device("cpu"), torch.float32)
    x = torch.randn(3, args.d_model)
    with torch.inference_mode():
        h = first(x, kv[:args.layer + 1])
        torch.testing.assert_close(second(h, kv[args.layer + 1:]), whole(x, kv))
        values, indices, selected, scores = encode(h)
    assert values.shape == (3, args.k) and indices.dtype == torch.int32
    assert selected.shape == (3, args.columns) and scores.shape == (3, args.probes)
    assert bool((values[:, :-1] >= values[:, 1:]).all())  # top-k in order
