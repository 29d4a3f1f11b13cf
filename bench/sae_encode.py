"""SAE encode throughput against this machine's own dense matmul rate.

    .venv/bin/python -m bench.sae_encode [--d-in 640] [--d-sae 16384] [--batch 256] [--seconds 3]

For each architecture it times ``SAE.encode_for_monitor`` (encode + rule-feature gather + per-row
top-k, what the sidecar does per batch) and compares it with a bare ``x @ W_enc`` of the same
shapes measured in the same run: the encoder matmul is the floor of any encode, so that
fraction is the efficiency. bf16 is timed on a small batch only: CPUs without AVX512-BF16 run
bf16 matmuls about 200x slower than fp32.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from rich.console import Console
from rich.table import Table

from latentguard.monitors.sae import SAE, SAEConfig, architecture_class

console = Console()


def make_sae(arch: str, d_in: int, d_sae: int, dtype: torch.dtype) -> SAE:
    g = torch.Generator().manual_seed(0)
    t = {
        "W_enc": torch.randn(d_in, d_sae, generator=g) / d_in**0.5,
        "W_dec": torch.randn(d_sae, d_in, generator=g) / d_sae**0.5,
        "b_dec": torch.zeros(d_in),
        "b_enc": torch.randn(d_sae, generator=g) * 0.1 - 0.5,
    }
    if arch == "jumprelu":
        t["threshold"] = torch.full((d_sae,), 0.2)
    if arch == "gated":
        t["b_gate"] = t.pop("b_enc")
        t["b_mag"] = torch.zeros(d_sae)
        t["r_mag"] = torch.zeros(d_sae)
    cfg = SAEConfig(architecture=arch, d_in=d_in, d_sae=d_sae, hook_name="layers.6", layer=6,
                    k=64 if arch == "topk" else None)
    return architecture_class(arch)(cfg, {k: v.to(dtype) for k, v in t.items()})


def rate(fn: Callable[[], object], rows: int, seconds: float) -> float:
    """Rows per second of ``fn`` (best of repeated timing windows, after a warm-up)."""
    fn()
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        fn()
        best = max(best, rows / (time.perf_counter() - t0))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d-in", type=int, default=640)
    ap.add_argument("--d-sae", type=int, default=16384)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--k", type=int, default=32, help="trace top-k per token")
    ap.add_argument("--features", type=int, default=64, help="rule features gathered")
    ap.add_argument("--seconds", type=float, default=3.0, help="timing window per row")
    ap.add_argument("--bf16-batch", type=int, default=8)
    ap.add_argument("--archs", default="standard,topk,jumprelu,gated")
    args = ap.parse_args()
    d_in, d_sae, n = args.d_in, args.d_sae, args.batch
    flop = 2 * d_in * d_sae
    console.print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
                  f"d_in={d_in} d_sae={d_sae} batch={n} k={args.k} features={args.features}")

    table = Table("dtype", "what", "tokens/s", "GFLOP/s", "of matmul")
    idx = torch.randperm(d_sae)[: args.features]
    for dtype, rows in ((torch.float32, n), (torch.bfloat16, args.bf16_batch)):
        x = torch.randn(rows, d_in).to(dtype)
        w = torch.randn(d_in, d_sae).to(dtype)
        secs = args.seconds if dtype == torch.float32 else min(args.seconds, 1.0)
        with torch.inference_mode():
            base = rate(lambda x=x, w=w: x @ w, rows, secs)
        name = str(dtype).removeprefix("torch.")
        table.add_row(name, "dense matmul x @ W_enc", f"{base:,.0f}", f"{base * flop / 1e9:.1f}",
                      "100%")
        for arch in args.archs.split(","):
            sae = make_sae(arch, d_in, d_sae, dtype)
            r = rate(lambda sae=sae, x=x: sae.encode_for_monitor(x, idx, args.k), rows, secs)
            table.add_row(name, f"{arch} encode_for_monitor", f"{r:,.0f}",
                          f"{r * flop / 1e9:.1f}", f"{r / base:.0%}")
    console.print(table)


if __name__ == "__main__":
    main()
