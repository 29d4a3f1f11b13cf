"""GPU check, torch only (issue 16, item 5): what the tap and a worker-side SAE encode add to a
compiled decode step of a real model's shape.

    python bench/gpu_tap.py --out gpu_tap.json                 # Llama-3-8B widths, bf16, CUDA
    python bench/gpu_tap.py --device cpu --tiny --no-compile   # a smoke run anywhere

The GPU machine this is for has PyTorch and Triton but no vLLM, no model weights, no pydantic
and a 64 MiB limit on what travels, so this file imports nothing of latentguard: it builds a
random decoder stack of the model's widths (the timing does not depend on the weights), with a
KV cache of ``--context`` tokens per sequence, and times one decode step per batch size in
three ways, side by side in one run:

- ``plain``: the whole stack (and the LM head) as one compiled graph under CUDA graphs;
- ``split``: the same stack compiled as two pieces that break after layer ``--layer``, as vLLM's
  piecewise CUDA graphs break around the ``latentguard::tap`` op (the cost of the break alone);
- ``features``: the split step with the tap's work between the pieces, as the features mode does
  it in the worker (``monitors.sae`` math, written out here): the residual row encoded by a TopK
  SAE of ``--d-sae`` features (``(x - b_dec) @ W_enc + b_enc``, ReLU, top ``--k``), the columns
  rules read gathered, ``--probes`` residual probe scores, and what goes on the wire (top-k
  indices int32 and values fp16, the columns and probe scores fp32) copied to pinned host
  memory and waited for, as the plugin must before it sends;
- ``rows``: the split step copying the raw rows (fp32, what the rows mode sends) to the host.

It prints the added time per step of each mode over ``plain`` and the bytes per token on the
wire, and writes them as JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class RMSNorm(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: Tensor) -> Tensor:
        var = x.float().pow(2).mean(-1, keepdim=True)
        return (x.float() * torch.rsqrt(var + 1e-6)).to(x.dtype) * self.weight


class DecoderLayer(nn.Module):
    """A Llama-style layer at decode: one new token per sequence against a static KV cache."""

    def __init__(self, d: int, heads: int, kv_heads: int, ffn: int) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, d // heads
        self.attn_norm, self.mlp_norm = RMSNorm(d), RMSNorm(d)
        self.qkv = nn.Linear(d, (heads + 2 * kv_heads) * self.head_dim, bias=False)
        self.o = nn.Linear(heads * self.head_dim, d, bias=False)
        self.gate_up = nn.Linear(d, 2 * ffn, bias=False)
        self.down = nn.Linear(ffn, d, bias=False)

    def forward(self, x: Tensor, k_cache: Tensor, v_cache: Tensor) -> Tensor:
        b = x.shape[0]
        q, k, v = self.qkv(self.attn_norm(x)).split(
            [self.heads * self.head_dim, self.kv_heads * self.head_dim,
             self.kv_heads * self.head_dim], dim=-1)
        q = q.view(b, self.heads, 1, self.head_dim)
        # Attention reads the static cache; the new token's k, v are computed (the qkv matmul
        # is the cost) but not written back: an input mutation would keep the compiler from
        # capturing a CUDA graph, and the timing does not depend on the cache's content.
        del k, v
        att = F.scaled_dot_product_attention(q, k_cache, v_cache, enable_gqa=True)
        x = x + self.o(att.reshape(b, -1))
        gate, up = self.gate_up(self.mlp_norm(x)).chunk(2, dim=-1)
        return x + self.down(F.silu(gate) * up)


class Piece(nn.Module):
    """Consecutive layers (and, for the last piece, the final norm and LM head)."""

    def __init__(self, layers: Sequence[DecoderLayer], head: nn.Module | None) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.head = head

    def forward(self, x: Tensor, caches: list[tuple[Tensor, Tensor]]) -> Tensor:
        for layer, (k, v) in zip(self.layers, caches, strict=True):
            x = layer(x, k, v)
        return self.head(x) if self.head is not None else x


class WorkerEncode(nn.Module):
    """The features mode's work at the tap: TopK SAE encode, rule columns, probe scores."""

    def __init__(self, d: int, d_sae: int, k: int, columns: int, probes: int) -> None:
        super().__init__()
        self.k = k
        self.w_enc = nn.Parameter(torch.randn(d, d_sae) / math.sqrt(d))
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.b_dec = nn.Parameter(torch.zeros(d))
        self.register_buffer("columns", torch.randperm(d_sae)[:columns])
        self.probes = nn.Parameter(torch.randn(d, probes) / math.sqrt(d))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        pre = (x - self.b_dec) @ self.w_enc + self.b_enc
        acts = pre.relu()
        values, indices = acts.topk(self.k, dim=-1)
        # A rule's feature is its activation where it is in the top k, else 0 (TopK SAE).
        selected = acts.index_select(1, self.columns)
        kth = values[:, -1:]
        selected = torch.where(selected >= kth, selected, torch.zeros_like(selected))
        scores = x.float() @ self.probes.float()
        return values.half(), indices.int(), selected.float(), scores


def wire_bytes(k: int, columns: int, probes: int) -> int:
    """Per token in features mode: top-k values fp16 + indices int32, columns and scores fp32."""
    return k * (2 + 4) + 4 * columns + 4 * probes


def build(args: argparse.Namespace, device: torch.device, dtype: torch.dtype
          ) -> tuple[Piece, Piece, Piece, WorkerEncode]:
    torch.manual_seed(0)
    layers = [DecoderLayer(args.d_model, args.heads, args.kv_heads, args.ffn)
              for _ in range(args.layers)]
    head = nn.Sequential(RMSNorm(args.d_model), nn.Linear(args.d_model, args.vocab, bias=False))
    whole = Piece(layers, head)
    first, second = Piece(layers[:args.layer + 1], None), Piece(layers[args.layer + 1:], head)
    encode = WorkerEncode(args.d_model, args.d_sae, args.k, args.columns, args.probes)
    for m in (whole, encode):
        m.to(device=device, dtype=dtype).requires_grad_(False).eval()
    return whole, first, second, encode


def caches(args: argparse.Namespace, batch: int, device: torch.device, dtype: torch.dtype
           ) -> list[tuple[Tensor, Tensor]]:
    shape = (batch, args.kv_heads, args.context, args.d_model // args.heads)
    return [(torch.randn(shape, device=device, dtype=dtype),
             torch.randn(shape, device=device, dtype=dtype)) for _ in range(args.layers)]


def time_step(step: Callable[[], Any], device: torch.device, warmup: int, steps: int) -> float:
    """Median milliseconds of ``step`` (each timed alone, synchronised)."""
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def one() -> None:
        if cuda:  # a new step for CUDA graph trees: earlier outputs may be overwritten
            torch.compiler.cudagraph_mark_step_begin()
        step()

    for _ in range(warmup):
        one()
    sync()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        one()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    whole, first, second, encode = build(args, device, dtype)

    def compiled(m: Callable[..., Any]) -> Callable[..., Any]:
        if args.no_compile:
            return m
        # reduce-overhead: CUDA graphs, one per piece, as vLLM's piecewise mode captures them.
        return torch.compile(m, mode="reduce-overhead", dynamic=False)

    fns = tuple(compiled(m) for m in (whole, first, second, encode))
    results = [measure_batch(args, batch, device, dtype, fns) for batch in args.batches]
    return {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "compiled": not args.no_compile,
        "shape": {k: getattr(args, k) for k in ("d_model", "layers", "heads", "kv_heads", "ffn",
                                                "vocab", "context", "layer", "d_sae", "k",
                                                "columns", "probes", "dtype")},
        "wire_bytes_per_token": {"features": wire_bytes(args.k, args.columns, args.probes),
                                 "rows": 4 * args.d_model},
        "results": results,
    }


def measure_batch(args: argparse.Namespace, batch: int, device: torch.device, dtype: torch.dtype,
                  fns: tuple[Callable[..., Any], ...]) -> dict[str, Any]:
    """Median step time of each mode at ``batch`` sequences, and what each adds to ``plain``."""
    c_whole, c_first, c_second, c_encode = fns
    pin = device.type == "cuda"
    kv = caches(args, batch, device, dtype)
    x = torch.randn(batch, args.d_model, device=device, dtype=dtype)
    n_first = args.layer + 1
    host_rows = torch.empty(batch, args.d_model, dtype=torch.float32, pin_memory=pin)
    host = [torch.empty(batch, args.k, dtype=torch.float16, pin_memory=pin),
            torch.empty(batch, args.k, dtype=torch.int32, pin_memory=pin),
            torch.empty(batch, args.columns, dtype=torch.float32, pin_memory=pin),
            torch.empty(batch, args.probes, dtype=torch.float32, pin_memory=pin)]

    def plain() -> Any:
        return c_whole(x, kv)

    def split() -> Any:
        h = c_first(x, kv[:n_first])
        return c_second(h, kv[n_first:])

    def features() -> Any:
        h = c_first(x, kv[:n_first])
        for dst, src in zip(host, c_encode(h), strict=True):
            dst.copy_(src, non_blocking=pin)
        out = c_second(h, kv[n_first:])
        if pin:
            torch.cuda.current_stream().synchronize()  # the plugin sends after this
        return out

    def rows() -> Any:
        h = c_first(x, kv[:n_first])
        host_rows.copy_(h.float(), non_blocking=pin)
        out = c_second(h, kv[n_first:])
        if pin:
            torch.cuda.current_stream().synchronize()
        return out

    ms = {name: time_step(fn, device, args.warmup, args.steps)
          for name, fn in (("plain", plain), ("split", split), ("features", features),
                           ("rows", rows))}
    added = {n: 100 * (ms[n] / ms["plain"] - 1) for n in ms if n != "plain"}
    print(f"batch {batch:4d}: plain {ms['plain']:.3f} ms, split {added['split']:+.2f}%, "
          f"features {added['features']:+.2f}%, rows {added['rows']:+.2f}%", flush=True)
    return {"batch": batch, "ms": ms, "added_pct": added}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16")
    p.add_argument("--d-model", type=int, default=4096)
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--ffn", type=int, default=14336)
    p.add_argument("--vocab", type=int, default=128256)
    p.add_argument("--context", type=int, default=512, help="KV-cache tokens per sequence")
    p.add_argument("--layer", type=int, default=15, help="the tapped layer")
    p.add_argument("--d-sae", type=int, default=65536)
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--columns", type=int, default=32, help="feature columns rules read")
    p.add_argument("--probes", type=int, default=4)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64, 256])
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--no-compile", action="store_true", help="eager (a smoke run)")
    p.add_argument("--tiny", action="store_true", help="small widths (a smoke run)")
    p.add_argument("--out", type=Path)
    return p


TINY = {"d_model": 64, "layers": 4, "heads": 4, "kv_heads": 2, "ffn": 128, "vocab": 256,
        "context": 16, "layer": 1, "d_sae": 512, "k": 8, "columns": 4, "probes": 2,
        "batches": [1, 4], "warmup": 1, "steps": 3}


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.tiny:
        for key, value in TINY.items():
            setattr(args, key, value)
    if not 0 <= args.layer < args.layers - 1:
        raise SystemExit(f"--layer: must be below the last layer ({args.layers - 1})")
    with torch.inference_mode():
        report = run(args)
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
