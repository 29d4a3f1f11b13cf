"""Plain vLLM against vLLM monitored by latentguard (async and sync), side by side in one run.

    .venv/bin/python -m bench.serve_bench     # make bench; Gemma 3 270M + the shipped SAE

It serves the model twice through vLLM's OpenAI server (eager mode, fp32, same flags, same
logits processor), both servers up at once: one with the plugin off (`LATENTGUARD_DISABLE=1`),
one with the plugin attached to a sidecar process running the SAE and its rule pack (blocks
turned into alerts, so every request writes the same number of tokens; policies `bench-async`
and `bench-sync`). Only one server is loaded at a time (an idle one uses ~0.01 cores), and the
runs interleave: for each batch size (requests in flight), `--repeats` times plain, async and
sync back to back (the order reversed every other time), so the VM's drift over minutes falls
on both sides alike. Each run streams the same prompts (heads of stdlib functions), greedy,
`ignore_eos`, `--max-tokens` each; it reports output tokens/s, the ratio monitored / plain (the
median of the per-repeat ratios, each against the plain run next to it), p50 and p99 of the
gaps between streamed tokens (time per output token), and the sidecar's CPU (cores busy) and
peak memory.

It also measures, on the same machine:

* tokens emitted after a block trigger: the unsafe-code rule blocks a prompt Gemma continues
  with `shell=True`, in sync and async mode, `--block-copies` at once;
* the SAE encode rate (`encode_for_monitor`, the sidecar's per-batch work) as a fraction of a
  bare `x @ W_enc` of the same shapes;
* ingest: rows per second, per core of sidecar CPU, that the sidecar takes over a real gRPC
  stream (decode-like steps of one row per request, and prefill-like steps), verdicts awaited.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import torch
from rich.console import Console
from rich.table import Table

from bench.common import write_results
from bench.sae_encode import rate
from bench.serving import (
    SidecarProcess,
    alerting,
    plugin_env,
    read_pack,
    sidecar_process,
    write_pack,
)
from latentguard.cli.launcher import LOGITS_PROCESSOR, compiled_args, http_ok, wait_until
from latentguard.monitors.sae import SAE, load_sae

log = logging.getLogger("serve_bench")
console = Console()

SHIPPED_SAE = Path(__file__).resolve().parents[1] / "saes/gemma-3-270m/blocks.9.hook_resid_post"
BLOCK_PROMPT = "import subprocess\ndef run(cmd):\n    return subprocess."
BLOCK_RULE = "unsafe-code"


# ---- inputs ---------------------------------------------------------------------------------

def stdlib_prompts(n: int) -> list[str]:
    """Heads (signature and docstring) of stdlib functions: code prompts any machine has."""
    import json as json_mod
    import string

    heads: list[str] = []
    for module in (textwrap, json_mod.decoder, string, ast, argparse):
        source = Path(module.__file__ or "").read_text(encoding="utf-8")
        lines = source.splitlines(keepends=True)
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef) and len(node.body) > 1:
                head = textwrap.dedent("".join(lines[node.lineno - 1: node.body[0].lineno - 1]))
                if head.strip() and len(head) < 400:
                    heads.append(head + "    ")
            if len(heads) == n:
                return heads
    return heads


def bench_pack(pack: Path, out: Path) -> Path:
    """The SAE's rule pack with every rule only alerting (policies bench-async, bench-sync),
    plus the real block rule under policies block-async and block-sync."""
    data = read_pack(pack)
    blocker = next(r for r in data["rules"] if r["name"] == BLOCK_RULE)
    names = [r["name"] for r in data["rules"]]
    data["rules"] = [*alerting(data["rules"]), {**blocker, "name": f"{BLOCK_RULE}-block"}]
    data["policies"] = [
        {"name": "bench-async", "rules": names, "mode": "async", "on_failure": "open"},
        {"name": "bench-sync", "rules": names, "mode": "sync", "on_failure": "open",
         "timeout_ms": 2000},
        {"name": "block-async", "rules": [f"{BLOCK_RULE}-block"], "mode": "async"},
        {"name": "block-sync", "rules": [f"{BLOCK_RULE}-block"], "mode": "sync",
         "timeout_ms": 2000},
    ]
    return write_pack(data, out)


# ---- processes ------------------------------------------------------------------------------

@dataclass
class Usage:
    """CPU seconds and peak resident memory of a process tree, sampled in the background."""
    pid: int
    cpu_s: float = 0.0
    peak_rss: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def _tree(self) -> list[psutil.Process]:
        root = psutil.Process(self.pid)
        return [root, *root.children(recursive=True)]

    def _cpu(self) -> float:
        total = 0.0
        for p in self._tree():
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return total

    def _rss(self) -> None:
        rss = 0
        for p in self._tree():
            try:
                rss += p.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        self.peak_rss = max(self.peak_rss, rss)

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            self._rss()

    @contextmanager
    def measure(self) -> Iterator[Usage]:
        start = self._cpu()
        self._rss()  # a run shorter than the sampling period still gets a reading
        self._stop.clear()
        thread = threading.Thread(target=self._sample, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join()
            self._rss()
            self.cpu_s = self._cpu() - start


@contextmanager
def vllm_server(model: Path, env: dict[str, str], port: int, log_path: Path,
                max_num_seqs: int, max_model_len: int, compiled: bool = False
                ) -> Iterator[subprocess.Popen[bytes]]:
    mode = compiled_args(gpu=torch.cuda.is_available()) if compiled else ["--enforce-eager"]
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
           "--served-model-name", "bench", *mode, "--dtype", "float32",
           "--max-model-len", str(max_model_len), "--max-num-seqs", str(max_num_seqs),
           "--port", str(port),
           "--logits-processors", LOGITS_PROCESSOR, "--seed", "0"]
    with log_path.open("wb") as out:
        proc = subprocess.Popen(cmd, env={**os.environ, **env}, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/health"), proc,
                   f"vLLM (log: {log_path})", 900)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


# ---- load -----------------------------------------------------------------------------------

@dataclass
class Streamed:
    tag: str
    sent: float
    arrivals: list[float]
    tokens: int
    text: str


async def _one(session: aiohttp.ClientSession, url: str, prompt: str, max_tokens: int,
               extra: dict[str, str], ignore_eos: bool) -> Streamed:
    payload = {"model": "bench", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
               "ignore_eos": ignore_eos, "stream": True,
               "stream_options": {"include_usage": True}, "vllm_xargs": extra}
    sent, arrivals, tokens, text = time.perf_counter(), [], 0, []
    async with session.post(url, json=payload) as resp:
        if resp.status != 200:
            raise RuntimeError(f"vLLM answered {resp.status}: {await resp.text()}")
        async for raw in resp.content:
            line = raw.strip()
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("choices") and chunk["choices"][0].get("text"):
                arrivals.append(time.perf_counter())
                text.append(chunk["choices"][0]["text"])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return Streamed(extra.get("latentguard_tag", ""), sent, arrivals, tokens, "".join(text))


async def _load(url: str, prompts: list[str], batch: int, max_tokens: int,
                extra: dict[str, str], prefix: str, ignore_eos: bool = True) -> list[Streamed]:
    queue = list(enumerate(prompts))
    done: list[Streamed] = []
    timeout = aiohttp.ClientTimeout(total=3600)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async def worker() -> None:
            while queue:
                i, prompt = queue.pop(0)
                done.append(await _one(session, url, prompt, max_tokens,
                                       {**extra, "latentguard_tag": f"{prefix}-{i}"},
                                       ignore_eos))
        await asyncio.gather(*(worker() for _ in range(batch)))
    return done


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def run_load(url: str, prompts: list[str], batch: int, max_tokens: int,
             extra: dict[str, str], prefix: str, usage: Usage | None) -> dict[str, Any]:
    asyncio.run(_load(url, prompts[:batch], batch, 4, extra, f"{prefix}-warm"))
    t0 = time.perf_counter()
    with usage.measure() if usage is not None else nullcontext():
        out = asyncio.run(_load(url, prompts, batch, max_tokens, extra, prefix))
    wall = time.perf_counter() - t0
    gaps = [b - a for s in out for a, b in zip(s.arrivals, s.arrivals[1:], strict=False)]
    tokens = sum(s.tokens for s in out)
    result: dict[str, Any] = {
        "batch": batch, "requests": len(out), "tokens": tokens, "wall_s": wall,
        "tokens_per_s": tokens / wall,
        "tpot_p50_ms": 1000 * percentile(gaps, 50), "tpot_p99_ms": 1000 * percentile(gaps, 99),
        "ttft_p50_ms": 1000 * percentile([s.arrivals[0] - s.sent for s in out if s.arrivals],
                                         50)}
    if usage is not None:
        result.update(sidecar_cores=usage.cpu_s / wall, sidecar_cpu_s=usage.cpu_s,
                      sidecar_peak_rss_mb=usage.peak_rss / 2**20)
    return result


# ---- the parts ------------------------------------------------------------------------------

def encode_fraction(sae: SAE, batch: int, seconds: float) -> dict[str, Any]:
    x = torch.randn(batch, sae.d_in) * 20
    idx = torch.arange(min(64, sae.d_sae))
    w = sae.W_enc.contiguous()
    matmul = rate(lambda: x @ w, batch, seconds)
    encode = rate(lambda: sae.encode_for_monitor(x, idx, 8), batch, seconds)
    flop = 2 * sae.d_in * sae.d_sae
    return {"batch": batch, "d_in": sae.d_in, "d_sae": sae.d_sae,
            "matmul_rows_per_s": matmul, "matmul_gflops": matmul * flop / 1e9,
            "encode_rows_per_s": encode, "fraction": encode / matmul,
            "threads": torch.get_num_threads()}


def ingest(sidecar: SidecarProcess, sae: SAE, requests: int, steps: int,
           rows_per_request: int) -> dict[str, Any]:
    """Steps of `rows_per_request` rows for each of `requests` requests, sent over a real
    Monitor stream as the plugin sends them; the sidecar's CPU time over the whole stream."""
    import grpc

    from latentguard.v1 import common_pb2, monitor_pb2, monitor_pb2_grpc

    g = torch.Generator().manual_seed(0)
    n = requests * rows_per_request
    rows = (torch.randn(n, sae.d_in, generator=g) * 20).numpy().tobytes()
    tags = [f"ingest-{rows_per_request}-{i}" for i in range(requests)]
    messages: list[monitor_pb2.MonitorMessage] = [monitor_pb2.MonitorMessage(
        hello=monitor_pb2.Hello(client="bench", hook_name=sae.hook_name, d_model=sae.d_in))]
    for step in range(steps):
        pos0 = step * rows_per_request
        batch = monitor_pb2.StepBatch(
            step=step + 1,
            started=[monitor_pb2.RequestStart(request_tag=t, policy="bench-async",
                                              prompt_tokens=0) for t in tags] if step == 0
            else [],
            spans=[monitor_pb2.RowSpan(
                request_tag=t, row_start=i * rows_per_request,
                positions=list(range(pos0, pos0 + rows_per_request)),
                token_ids=[100 + (pos0 + j) % 1000 for j in range(rows_per_request)],
                prefill=False) for i, t in enumerate(tags)],
            rows=common_pb2.Tensor(dtype=common_pb2.DTYPE_FLOAT32, shape=[n, sae.d_in],
                                   data=rows),
            finished=[monitor_pb2.RequestEnd(request_tag=t, finish_reason="length",
                                             completion_tokens=steps * rows_per_request)
                      for t in tags] if step == steps - 1 else [])
        messages.append(monitor_pb2.MonitorMessage(step=batch))
    usage = Usage(sidecar.pid)
    with grpc.insecure_channel(sidecar.target, options=[
            ("grpc.max_send_message_length", 256 << 20),
            ("grpc.max_receive_message_length", 256 << 20)]) as channel:
        stub = monitor_pb2_grpc.MonitorStub(channel)
        t0 = time.perf_counter()
        with usage.measure():
            replies = list(stub.Stream(iter(messages), timeout=600))
        wall = time.perf_counter() - t0
    errors = [r.error.message for r in replies if r.WhichOneof("kind") == "error"]
    if errors:
        raise RuntimeError(f"the sidecar refused the ingest stream: {errors[0]}")
    total = steps * n
    return {"requests": requests, "rows_per_request_per_step": rows_per_request,
            "steps": steps, "rows": total, "wall_s": wall, "rows_per_s": total / wall,
            "sidecar_cpu_s": usage.cpu_s,
            "rows_per_s_per_core": total / usage.cpu_s if usage.cpu_s else float("nan")}


def block_latency(url: str, sidecar: SidecarProcess, copies: int,
                  max_tokens: int) -> dict[str, Any]:
    """Tokens the model emits after the token on which the block rule fired."""
    out: dict[str, Any] = {}
    for mode in ("sync", "async"):
        streamed = asyncio.run(_load(url, [BLOCK_PROMPT] * copies, copies, max_tokens,
                                     {"latentguard_policy": f"block-{mode}"}, f"block-{mode}",
                                     ignore_eos=False))
        traces = sidecar.traces([s.tag for s in streamed])
        after = []
        for s in streamed:
            t = traces[s.tag]
            hits = [h for h in t.hits if h.action == 2]  # ACTION_TYPE_BLOCK
            if not t.blocked or not hits:
                after.append(None)
                continue
            last = t.prompt_tokens + t.completion_tokens - 1  # position of the last token
            # The forced EOS that ends a blocked request is not an emitted token.
            after.append(last - hits[0].position - 1)
        seen = [a for a in after if a is not None]
        out[mode] = {"requests": copies, "blocked": len(seen),
                     "tokens_after_trigger_max": max(seen) if seen else None,
                     "tokens_after_trigger": after,
                     "completion": streamed[0].text}
    return out


def machine() -> dict[str, Any]:
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines()
                if line.startswith("model name")), "unknown")
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": psutil.virtual_memory().total / 1e9,
            "avx512": " avx512f " in cpuinfo, "amx_bf16": " amx_bf16 " in cpuinfo,
            "python": platform.python_version(), "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


# ---- report ---------------------------------------------------------------------------------

@dataclass
class ServeResults:
    """The results JSON: the run's settings and machine, then each measurement."""

    model: str
    model_name: str
    sae: str
    machine: dict[str, Any]
    max_tokens: int
    date: str
    sidecar_cpus: list[int] | None
    compiled: bool
    vllm_cpu_bind: str | None
    encode: dict[str, Any]
    """``encode_fraction``: the SAE encode rate against the bare matmul."""
    block: dict[str, Any]
    """``block_latency`` per mode: tokens emitted after the block rule fired."""
    ingest: list[dict[str, Any]]
    """``ingest``: decode-like, then prefill-like steps over a real Monitor stream."""
    throughput: list[dict[str, Any]]
    """``interleaved``: one row per batch size and mode (plain, async, sync)."""


def report_table(result: ServeResults) -> Table:
    where = result.machine.get("gpu") or result.machine["cpu"]
    how = "compiled" if result.compiled else "eager"
    t = Table(title=f"vLLM plain vs monitored ({result.model_name}, {how}, {where})")
    for col in ("batch", "mode", "tokens/s", "vs plain", "TPOT p50 ms", "TPOT p99 ms",
                "sidecar cores", "sidecar MB"):
        t.add_column(col, justify="right")
    for row in result.throughput:
        t.add_row(str(row["batch"]), row["mode"], f"{row['tokens_per_s']:.1f}",
                  f"{row['ratio']:.1%}" if row["mode"] != "plain" else "",
                  f"{row['tpot_p50_ms']:.0f}", f"{row['tpot_p99_ms']:.0f}",
                  f"{row['sidecar_cores']:.2f}" if "sidecar_cores" in row else "",
                  f"{row['sidecar_peak_rss_mb']:.0f}" if "sidecar_peak_rss_mb" in row else "")
    return t


def interleaved(args: argparse.Namespace, prompts: list[str], plain_url: str,
                monitored_url: str, usage: Usage) -> list[dict[str, Any]]:
    """Per batch size, `args.repeats` x (plain, async, sync), order reversed every other time;
    one row per mode with the median tokens/s and the median of the per-repeat ratios."""
    rows: list[dict[str, Any]] = []
    modes = ("async", "sync") if args.skip_plain else ("plain", "async", "sync")
    for b in args.batches:
        n = max(4, b * args.rounds)
        runs: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
        for r in range(args.repeats):
            for mode in (modes if r % 2 == 0 else modes[::-1]):
                if mode == "plain":
                    run = run_load(plain_url, prompts[:n], b, args.max_tokens, {},
                                   f"plain-{b}-{r}", None)
                else:
                    run = run_load(monitored_url, prompts[:n], b, args.max_tokens,
                                   {"latentguard_policy": f"bench-{mode}"}, f"{mode}-{b}-{r}",
                                   usage)
                runs[mode].append(run)
                console.print(f"{mode:6} batch {b}, repeat {r + 1}: "
                              f"{run['tokens_per_s']:.1f} tok/s")
        for mode in modes:
            row = summarize(runs[mode])
            if mode != "plain":
                ratios = [m["tokens_per_s"] / p["tokens_per_s"]
                          for m, p in zip(runs[mode], runs.get("plain", []), strict=False)]
                row["ratios"] = ratios
                row["ratio"] = statistics.median(ratios) if ratios else float("nan")
                console.print(f"{mode:6} batch {b}: {row['ratio']:.1%} of plain "
                              f"(repeats: {', '.join(f'{x:.1%}' for x in ratios)}), sidecar "
                              f"{row['sidecar_cores']:.2f} cores")
            rows.append({"mode": mode, **row})
    return rows


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of each number over repeated runs, and the runs themselves."""
    keys = [k for k, v in runs[0].items() if isinstance(v, int | float)]
    out: dict[str, Any] = {k: statistics.median(r[k] for r in runs) for k in keys}
    out["batch"], out["requests"] = runs[0]["batch"], runs[0]["requests"]
    if "sidecar_peak_rss_mb" in out:
        out["sidecar_peak_rss_mb"] = max(r["sidecar_peak_rss_mb"] for r in runs)
    out["runs"] = runs
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path,
                   help="HF model folder (default: gemma-3-270m, fetched when not cached)")
    p.add_argument("--sae", type=Path, default=SHIPPED_SAE,
                   help="SAE folder with its rules.yaml (default: the shipped Gemma SAE)")
    p.add_argument("--out", type=Path,
                   help="results JSON (default: bench/results/serve-cpu.json, or "
                   "serve-cpu-compiled.json with --compiled)")
    p.add_argument("--compiled", action="store_true",
                   help="serve vLLM's compiled model on both sides instead of eager mode (on "
                   "GPUs with piecewise CUDA graphs that break at the monitor's tap)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--rounds", type=int, default=2,
                   help="requests per batch size = batch x rounds (at least 4)")
    p.add_argument("--repeats", type=int, default=2,
                   help="interleaved plain/async/sync runs per batch size")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--max-model-len", type=int, default=1024)
    p.add_argument("--block-copies", type=int, default=8)
    p.add_argument("--port", type=int, default=8765, help="the plain server's port")
    p.add_argument("--monitored-port", type=int, help="the monitored server's (default: "
                   "--port + 1)")
    p.add_argument("--ingest-steps", type=int, default=100,
                   help="steps of the decode-like ingest stream (the prefill-like one: a fifth)")
    p.add_argument("--work", type=Path, help="folder for logs and the sidecar's data "
                   "(default: a new temporary folder, kept for reading the logs)")
    p.add_argument("--sidecar-cpus", type=int, nargs="+",
                   help="pin the sidecar to these cores (e.g. the one vLLM's OpenMP threads "
                   "leave free: see VLLM_CPU_OMP_THREADS_BIND)")
    p.add_argument("--skip-plain", action="store_true", help="monitored runs only (profiling)")
    args = p.parse_args(argv)
    if args.out is None:
        args.out = Path("bench/results/serve-cpu-compiled.json" if args.compiled
                        else "bench/results/serve-cpu.json")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.model is None:
        from latentguard.lab.models import fetch_model

        args.model = fetch_model("gemma-3-270m").folder
    sae = args.sae.resolve()
    work = (args.work or Path(tempfile.mkdtemp(prefix="serve-bench-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    console.print(f"logs and sidecar data: {work}")
    url = f"http://127.0.0.1:{args.port}/v1/completions"
    prompts = stdlib_prompts(max(args.batches) * args.rounds)
    host, date = machine(), time.strftime("%Y-%m-%d")
    console.print("SAE encode vs matmul ...")
    loaded = load_sae(sae)
    encode = encode_fraction(loaded, 256, 2.0)

    pack = bench_pack(sae / "rules.yaml", work / "bench-rules.yaml")
    monitored_port = args.monitored_port or args.port + 1
    monitored_url = f"http://127.0.0.1:{monitored_port}/v1/completions"
    with sidecar_process(work / "sidecar", sae=sae, rules=pack,
                         cpus=set(args.sidecar_cpus) if args.sidecar_cpus else None) as sidecar:
        usage = Usage(sidecar.pid)
        plain_server = nullcontext() if args.skip_plain else vllm_server(
            args.model, plugin_env(None), args.port, work / "vllm-plain.log",
            max(args.batches), args.max_model_len, args.compiled)
        with plain_server, vllm_server(args.model, plugin_env(sidecar, sae), monitored_port,
                                       work / "vllm-monitored.log", max(args.batches),
                                       args.max_model_len, args.compiled):
            rows = interleaved(args, prompts, url, monitored_url, usage)
            block = block_latency(monitored_url, sidecar, args.block_copies, 32)
        console.print("sidecar ingest ...")
        steps = args.ingest_steps
        ingested = [ingest(sidecar, loaded, 32, steps, 1),
                    ingest(sidecar, loaded, 4, max(1, steps // 5), 256)]
    order = {m: i for i, m in enumerate(("plain", "async", "sync"))}
    result = ServeResults(
        model=str(args.model), model_name=args.model.name, sae=str(args.sae), machine=host,
        max_tokens=args.max_tokens, date=date, sidecar_cpus=args.sidecar_cpus,
        compiled=args.compiled, vllm_cpu_bind=os.environ.get("VLLM_CPU_OMP_THREADS_BIND"),
        encode=encode, block=block, ingest=ingested,
        throughput=sorted(rows, key=lambda r: (r["batch"], order[r["mode"]])))
    write_results(args.out, result)
    console.print(report_table(result))
    enc = result.encode
    console.print(f"SAE encode: {enc['encode_rows_per_s']:,.0f} rows/s = {enc['fraction']:.0%} "
                  f"of the bare matmul ({enc['matmul_gflops']:.0f} GFLOP/s, "
                  f"{enc['threads']} threads)")
    for ing in result.ingest:
        console.print(f"ingest, {ing['requests']} requests x {ing['rows_per_request_per_step']} "
                      f"rows per step: {ing['rows_per_s']:,.0f} rows/s, "
                      f"{ing['rows_per_s_per_core']:,.0f} rows/s per sidecar core")
    for mode, b in result.block.items():
        console.print(f"block, {mode}: {b['blocked']}/{b['requests']} blocked, at most "
                      f"{b['tokens_after_trigger_max']} tokens after the trigger")
    console.print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
