"""Rows-mode ingest on one core: a StepBatch in, the step's rule hits out, stage by stage.

    .venv/bin/python -m bench.ingest [--sae FOLDER] [--requests 1,32,256] [--seconds 1]

What the sidecar does with a step of residual rows before it writes trace records: the wire
decode (`convert.step_model`, whose rows are a numpy view of the message's bytes), one SAE
encode of every row (``encode_for_monitor``: the rule features and the trace's top-k), the probe
scores, then the rules, timed for the per-token reference (one ``ReferenceSession`` per
request) and for the step-level ``RuleBatch``. It prints tokens/s per core of each stage and of
the whole path both ways, for decode steps (one generated row per request) at 1, 32 and 256
requests per step. Trace records (`server.records`) are left out. By default the shipped
Gemma 3 270M SAE (d_model 640, 16,384 features), its probes and its pack (every rule on).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from latentguard.monitors.probes import ProbeSet
from latentguard.monitors.rules import Policy, RuleEngine, load_rule_pack
from latentguard.monitors.rules.batch import RuleSpan
from latentguard.monitors.rules.reference import reference_session
from latentguard.monitors.rules.signals import probe_scores
from latentguard.monitors.sae import SAE, load_sae
from latentguard.server import convert
from latentguard.server.step import Step
from latentguard.v1 import common_pb2, monitor_pb2

console = Console(width=140)
ALL = Policy(name="all", rules=["*"])
SHIPPED = Path(__file__).resolve().parents[1] / "saes/gemma-3-270m/blocks.9.hook_resid_post"


def step_message(n_requests: int, d_in: int, number: int) -> monitor_pb2.StepBatch:
    """A decode step: one generated row per request, rows of a residual's scale."""
    rows = (torch.randn(n_requests, d_in) * 4).float()
    return monitor_pb2.StepBatch(
        step=number,
        spans=[monitor_pb2.RowSpan(request_tag=f"r{i}", row_start=i, positions=[number],
                                   token_ids=[7], prefill=False) for i in range(n_requests)],
        rows=common_pb2.Tensor(dtype=common_pb2.DTYPE_FLOAT32, shape=[n_requests, d_in],
                               data=rows.numpy().tobytes()))


def seconds_per_call(fn: Callable[[], object], budget: float) -> float:
    """Best time of one call, repeated for ``budget`` seconds (at least 3 times)."""
    fn()
    best, calls, deadline = float("inf"), 0, time.perf_counter() + budget
    while calls < 3 or time.perf_counter() < deadline:
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        calls += 1
    return best


def measure(n: int, sae: SAE, engine: RuleEngine, probes: ProbeSet | None, top_k: int,
            budget: float) -> dict[str, float]:
    """Seconds per decode step of ``n`` requests, per stage."""
    msg = step_message(n, sae.d_in, 1)
    step: Step = convert.step_model(msg, sae.d_in, sae.d_sae)
    selected = sae.encode_for_monitor(step.rows, engine.signal_features, top_k).selected
    pv = probe_scores(engine, probes, step.rows, selected)
    spans = [RuleSpan(s.tag, s.row_start, s.positions, s.prefill) for s in step.spans]
    sessions = [reference_session(engine, ALL) for _ in range(n)]
    batch = engine.new_batch()
    for s in step.spans:
        batch.open(s.tag, engine.rules_for(ALL))

    def reference() -> None:
        for i, s in enumerate(step.spans):
            lo, hi = s.row_start, s.stop
            sessions[i].step(selected[lo:hi], pv[lo:hi] if pv is not None else None,
                             s.positions, [s.prefill] * (hi - lo))

    return {
        "decode": seconds_per_call(lambda: convert.step_model(msg, sae.d_in, sae.d_sae), budget),
        "encode": seconds_per_call(lambda: sae.encode_for_monitor(
            step.rows, engine.signal_features, top_k), budget),
        "probes": seconds_per_call(lambda: probe_scores(engine, probes, step.rows, selected),
                                   budget),
        "reference": seconds_per_call(reference, budget),
        "batch": seconds_per_call(lambda: batch.step(selected, pv, spans), budget),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sae", type=Path, default=SHIPPED)
    ap.add_argument("--requests", default="1,32,256", help="requests per step")
    ap.add_argument("--top-k", type=int, default=32, help="trace top-k per token")
    ap.add_argument("--seconds", type=float, default=1.0, help="timing per stage and row")
    args = ap.parse_args()
    torch.set_num_threads(1)
    sae = load_sae(args.sae)
    probes = ProbeSet.load(args.sae / "probes", d_in=sae.d_in, d_sae=sae.d_sae) \
        if (args.sae / "probes").is_dir() else None
    pack = load_rule_pack((args.sae / "rules.yaml").read_text(), str(args.sae / "rules.yaml"))
    engine = RuleEngine([r.model_copy(update={"enabled": True}) for r in pack.rules],
                        probes=probes, d_sae=sae.d_sae)
    console.print(f"{sae!r}; {len(engine.rules)} rules, probes "
                  f"{probes.names if probes else 'none'}; one thread; decode steps")
    table = Table("requests", "decode", "encode", "probes", "rules: reference", "rules: batch",
                  "path: reference", "path: batch", "batch/reference")
    with torch.inference_mode():
        for n in (int(r) for r in args.requests.split(",")):
            t = measure(n, sae, engine, probes, args.top_k, args.seconds)
            common = t["decode"] + t["encode"] + t["probes"]
            ref, new = common + t["reference"], common + t["batch"]
            table.add_row(str(n), *(f"{n / t[k]:,.0f}" for k in
                                    ("decode", "encode", "probes", "reference", "batch")),
                          f"{n / ref:,.0f}", f"{n / new:,.0f}", f"{ref / new:.2f}x")
    console.print(table)
    console.print("tokens/s per core of each stage alone, and of decode + encode + probes + "
                  "rules (trace records not included)")


if __name__ == "__main__":
    main()
