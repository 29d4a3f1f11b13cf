"""Rule evaluation per step: the per-token reference against the step-level engine, side by side.

    .venv/bin/python -m bench.rule_engine [--pack PATH] [--requests 1,32,256] [--seconds 1]

For 1, 32 and 256 requests per step, in decode steps (one generated row per request) and
prefill steps (``--chunk`` prompt rows per request), it feeds the same rule-feature and probe
values to one ``ReferenceSession`` per request (a Python loop per token, rule and signal: what
the sidecar ran before) and to one ``RuleBatch`` for all of them (one pass per step), checks
that both give the same hits, and prints tokens/s of each on one core and the ratio. The pack
is the shipped Gemma 3 270M pack with every rule enabled and reading prompt tokens too (scope
``both``, so that prefill rows are evaluated; 7 rules, 16 signals, one ``any`` of 10 features)
and, as a second row set, the same pack with four windowed rules added (a sum
over 16 tokens, a max over 8, 3 consecutive tokens, a mean over the request checked at the
end). Both are timed in the same run, alternating, best of the repeats.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from latentguard.monitors.rules import Policy, Rule, RuleEngine, RuleHit, load_rule_pack
from latentguard.monitors.rules.batch import RuleSpan
from latentguard.monitors.rules.reference import reference_session

console = Console(width=140)
ALL = Policy(name="all", rules=["*"])
PACK = Path(__file__).resolve().parents[1] / "saes/gemma-3-270m/blocks.9.hook_resid_post/rules.yaml"


class _Probes:
    def __init__(self, names: list[str]) -> None:
        self.names = names


def windowed(rules: list[Rule]) -> list[Rule]:
    """Four windowed rules on the pack's own features and probes."""
    probe = next(s.probe for r in rules for s in r.when.signals() if s.probe is not None)
    feature = next(s.feature for r in rules for s in r.when.signals() if s.feature is not None)
    extra = [
        {"name": "w-sum", "when": {"feature": feature, "threshold": 2000.0,
                                   "window": {"size": 16, "agg": "sum"}}},
        {"name": "w-max", "scope": "both", "when": {"all": [
            {"probe": probe, "threshold": 2.0, "window": {"size": 8, "agg": "max"}},
            {"feature": feature, "threshold": 150.0}]}},
        {"name": "w-run", "when": {"probe": probe, "threshold": 1.0, "consecutive": 3}},
        {"name": "w-end", "check": "end", "when": {"probe": probe, "threshold": 0.5,
                                                   "window": {"agg": "mean"}}},
    ]
    return rules + [Rule.model_validate(r) for r in extra]


def engine_of(rules: list[Rule]) -> RuleEngine:
    names = sorted({s.probe for r in rules for s in r.when.signals() if s.probe is not None})
    return RuleEngine([r.model_copy(update={"enabled": True, "scope": "both"}) for r in rules],
                      probes=_Probes(names))


Step = tuple[torch.Tensor, torch.Tensor, list[RuleSpan]]


def make_steps(engine: RuleEngine, n_requests: int, rows_each: int, n_steps: int,
               prompt: bool, sigma: float = 4.0, seed: int = 0) -> list[Step]:
    """Rule-feature values |N(0, 1)| x threshold / ``sigma`` and probe scores N(0, 1/2) (rules
    fire on well under 1% of tokens), as float32 encode/probe outputs."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.ones(len(engine.signal_features))
    for compiled in engine.rules.values():
        for s in compiled.signals:
            if s.source == "f":
                scale[s.column] = s.signal.threshold / sigma
    steps = []
    for k in range(n_steps):
        n = n_requests * rows_each
        fv = (torch.randn(n, scale.numel(), generator=g).abs() * scale).float()
        pv = (torch.randn(n, len(engine.probe_names), generator=g) / 2).float()
        spans = [RuleSpan(r, r * rows_each, list(range(k * rows_each, (k + 1) * rows_each)),
                          prompt) for r in range(n_requests)]
        steps.append((fv, pv, spans))
    return steps


def run_reference(engine: RuleEngine, steps: list[Step], n_requests: int) -> list[RuleHit]:
    sessions = [reference_session(engine, ALL) for _ in range(n_requests)]
    hits: list[RuleHit] = []
    for fv, pv, spans in steps:
        for span in spans:  # as server/stream.py did: one session per span
            lo, hi = span.row_start, span.row_start + len(span.positions)
            hits += sessions[int(str(span.key))].step(
                fv[lo:hi], pv[lo:hi], span.positions, [span.prompt] * (hi - lo))
    for s in sessions:
        hits += s.finish()
    return hits


def run_batch(engine: RuleEngine, steps: list[Step], n_requests: int) -> list[RuleHit]:
    batch = engine.new_batch()
    rules = engine.rules_for(ALL)
    for r in range(n_requests):
        batch.open(r, rules)
    hits: list[RuleHit] = []
    for fv, pv, spans in steps:
        for span_hits in batch.step(fv, pv, spans):
            hits += span_hits
    for r in range(n_requests):
        hits += batch.finish(r)
        batch.close(r)
    return hits


def best_rates(fns: list[Callable[[], object]], tokens: int, seconds: float) -> list[float]:
    """Tokens/s of each function, timed alternately until ``seconds`` pass (at least twice)."""
    best = [0.0] * len(fns)
    deadline = time.perf_counter() + seconds
    rounds = 0
    while rounds < 2 or time.perf_counter() < deadline:
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            best[i] = max(best[i], tokens / (time.perf_counter() - t0))
        rounds += 1
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pack", type=Path, default=PACK)
    ap.add_argument("--requests", default="1,32,256", help="requests per step")
    ap.add_argument("--chunk", type=int, default=256, help="prompt rows per request (prefill)")
    ap.add_argument("--tokens", type=int, default=4096,
                    help="tokens per timed run (at least one step)")
    ap.add_argument("--seconds", type=float, default=1.0, help="timing per row of the table")
    args = ap.parse_args()
    torch.set_num_threads(1)
    shipped = list(load_rule_pack(args.pack.read_text(), str(args.pack)).rules)
    packs = {"shipped": shipped, "+windows": windowed(shipped)}
    console.print(f"pack {args.pack} (every rule enabled, scope both); one thread; "
                  f"numpy {np.__version__}")
    table = Table("pack", "step", "requests", "rows/step", "hits/1k tok", "reference tok/s",
                  "batch tok/s", "batch/reference")
    for pack_name, rules in packs.items():
        engine = engine_of(rules)
        for mode in ("decode", "prefill"):
            for n_requests in (int(r) for r in args.requests.split(",")):
                rows_each = 1 if mode == "decode" else args.chunk
                per_step = n_requests * rows_each
                n_steps = max(1, args.tokens // per_step)
                steps = make_steps(engine, n_requests, rows_each, n_steps, mode == "prefill")
                want = run_reference(engine, steps, n_requests)
                got = run_batch(engine, steps, n_requests)
                same = [h.model_dump(exclude={"at"}) for h in want] == [
                    h.model_dump(exclude={"at"}) for h in got]
                if not same:
                    raise SystemExit(f"{pack_name} {mode} {n_requests}: hits differ")
                ref, new = best_rates(
                    [lambda e=engine, s=steps, n=n_requests: run_reference(e, s, n),
                     lambda e=engine, s=steps, n=n_requests: run_batch(e, s, n)],
                    per_step * n_steps, args.seconds)
                table.add_row(pack_name, mode, str(n_requests), f"{per_step:,}",
                              f"{1000 * len(got) / (per_step * n_steps):.1f}", f"{ref:,.0f}",
                              f"{new:,.0f}", f"{new / ref:.1f}x")
    console.print(table)
    console.print("Hits of both paths are the same (rules, positions, scores, evidence, "
                  "explanations).")


if __name__ == "__main__":
    main()
