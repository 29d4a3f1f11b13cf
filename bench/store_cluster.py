"""Trace writes per second against one Redis node and against a three-node Redis Cluster, in
the same run, with the same writers: how the store scales with nodes.

Writers are processes (as a fleet of sidecars is), each running `--concurrency` writes at once
through the store's own `TraceStore.save_many` (`--batch` traces per pipeline, as the writer
stores a spool segment: each trace's hash and its index shard entries), with traces of
`--tokens` tokens of 8 features each. Both set-ups are the
bundled redis-server with append-only persistence (`appendfsync everysec`), on loopback.

Two ratios are printed. *Measured*: writes/s of the cluster over one node. Where the writers
cannot saturate Redis (few cores for writers and nodes together) this mostly measures the
writers. *Capacity*: Redis runs commands on one thread, so a node is full when it spends one
CPU second per second; writes per CPU second of the busiest node is what that set-up can take
at most, whatever the writers. The alert stream (one Stream, in the config slot) is measured
the same way: alerts per CPU second of its node.

    python -m bench.store_cluster --seconds 10 --out bench/results/store-cluster.json
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import queue
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import redis
from redis.asyncio.cluster import RedisCluster

from bench.common import write_results
from latentguard.monitors.rules import RuleHit
from latentguard.server.records import (
    AlertRecord,
    FeatureValue,
    TokenRecord,
    TraceRecord,
    new_trace_id,
    utcnow,
)
from latentguard.server.store.alerts import AlertStream
from latentguard.server.store.client import connect
from latentguard.server.store.embedded import RedisServer, free_port
from latentguard.server.store.keys import Keys
from latentguard.server.store.local_cluster import LocalCluster
from latentguard.server.store.traces import TraceStore


@dataclass
class Setup:
    name: str
    nodes: int
    writes: int
    seconds: float
    writes_per_s: float
    node_cpu_s: list[float]
    """Redis CPU seconds (user + system) each node spent on the run: during it, less its idle
    rate measured just before."""
    capacity_per_s: float
    """Writes per CPU second of the busiest node: the most this set-up takes."""


@dataclass
class Results:
    command: str
    writers: int
    concurrency: int
    tokens: int
    batch: int
    cpus: int
    single: Setup
    cluster: Setup
    measured_ratio: float
    capacity_ratio: float
    alerts: Setup
    notes: list[str] = field(default_factory=list)


IDLE_S = 3.0


def _trace(tokens: int, flagged: bool) -> TraceRecord:
    started = utcnow()
    hits = [RuleHit(rule="unsafe-code", severity="high", action="block", position=3, score=2.5,
                    explanation="feature 3 at 2.5")] if flagged else []
    return TraceRecord(
        id=new_trace_id(started), started_at=started, request_tag="bench", model="m",
        tokens=[TokenRecord(position=i, token_id=1000 + i, text=" tok",
                            top_features=[FeatureValue(feature=7 * j + i % 50, value=1.5)
                                          for j in range(8)])
                for i in range(tokens)],
        hits=hits)


async def _write(url: str, kind: str, seconds: float, concurrency: int, tokens: int,
                 batch: int, start_at: float) -> int:
    client = connect(url)
    if isinstance(client, RedisCluster):
        await client.initialize()  # the slot map before concurrent use, as Store.open does
    keys = Keys("bench")
    traces = TraceStore(client, keys, timedelta(hours=1))
    alerts = AlertStream(client, keys, maxlen=100_000)
    sample = [_trace(tokens, flagged=n % 10 == 0) for n in range(20)]
    hit = sample[0].hits[0]
    done = 0

    async def loop(n: int) -> None:
        nonlocal done
        end = start_at + seconds
        while time.time() < end:
            if kind == "alerts":
                await alerts.publish(AlertRecord(trace_id=new_trace_id(), request_tag="b",
                                                 hit=hit))
                done += 1
            else:
                await traces.save_many([sample[(done + n + j) % len(sample)].model_copy(
                    update={"id": new_trace_id()}) for j in range(batch)])
                done += batch

    await asyncio.sleep(max(0.0, start_at - time.time()))
    await asyncio.gather(*(loop(n) for n in range(concurrency)))
    await client.aclose()
    return done


def _writer(url: str, kind: str, seconds: float, concurrency: int, tokens: int, batch: int,
            start_at: float, out: mp.Queue) -> None:  # type: ignore[type-arg]
    out.put(asyncio.run(_write(url, kind, seconds, concurrency, tokens, batch, start_at)))


def _cpu(port: int) -> float:
    with redis.Redis(port=port) as r:
        info = r.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _run(name: str, url: str, ports: list[int], kind: str, args: argparse.Namespace) -> Setup:
    ctx = mp.get_context("spawn")
    out: mp.Queue[int] = ctx.Queue()
    start_at = time.time() + max(args.warmup, IDLE_S + 1)  # past the writers' imports
    procs = [ctx.Process(target=_writer, args=(url, kind, args.seconds, args.concurrency,
                                                args.tokens, args.batch, start_at, out))
             for _ in range(args.writers)]
    for p in procs:
        p.start()
    # Each node's idle CPU (cluster bus, cron, fsync) over a few seconds before the writers
    # begin, taken off what the run used: what remains is the cost of the writes.
    time.sleep(max(0.0, start_at - IDLE_S - time.time()))
    idle_from, idle_t = [_cpu(p) for p in ports], time.time()
    time.sleep(max(0.0, start_at - time.time()))
    before, t0 = [_cpu(p) for p in ports], time.time()
    idle_rate = [(b - i) / (t0 - idle_t) for b, i in zip(before, idle_from, strict=True)]
    counts: list[int] = []
    while len(counts) < len(procs):
        try:
            counts.append(out.get(timeout=1.0))
        except queue.Empty:
            if any(p.exitcode not in (None, 0) for p in procs):
                raise RuntimeError(f"{name}: a writer failed (see its traceback)") from None
    elapsed = time.time() - t0
    used = [max(0.0, _cpu(p) - b - rate * elapsed)
            for p, b, rate in zip(ports, before, idle_rate, strict=True)]
    writes = sum(counts)
    for p in procs:
        p.join()
    setup = Setup(name=name, nodes=len(ports), writes=writes, seconds=args.seconds,
                  writes_per_s=writes / args.seconds, node_cpu_s=[round(u, 3) for u in used],
                  capacity_per_s=writes / max(max(used), 1e-6))
    print(f"{name:28s} {setup.writes_per_s:9.0f} writes/s   node CPU s "
          f"{setup.node_cpu_s}   capacity {setup.capacity_per_s:9.0f}/s", flush=True)
    return setup


def main(argv: list[str] | None = None) -> Results:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--writers", type=int, default=max(2, min(8, os.cpu_count() or 2)),
                        help="writer processes (default: the CPUs, 2 to 8)")
    parser.add_argument("--concurrency", type=int, default=16,
                        help="saves in flight per writer")
    parser.add_argument("--tokens", type=int, default=64, help="tokens per trace")
    parser.add_argument("--batch", type=int, default=32,
                        help="traces per pipeline (`save_many`), as the writer stores a spool "
                        "segment; 1 is one `save` per trace")
    parser.add_argument("--warmup", type=float, default=8.0,
                        help="seconds the writers get to start before they all begin")
    parser.add_argument("--out", type=Path, default=None, help="results JSON")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="lg-bench-") as tmp:
        with RedisServer(Path(tmp) / "single", port=free_port(), persistent=True) as one:
            single = _run("one node", one.url, [int(one.port or 0)], "traces", args)
        with LocalCluster(Path(tmp) / "cluster", 3) as cluster:
            three = _run("three-node cluster", cluster.url, cluster.ports, "traces", args)
            alerts = _run("alert stream (cluster)", cluster.url, cluster.ports, "alerts", args)
    results = Results(
        command="python -m bench.store_cluster " + " ".join(argv or sys.argv[1:]),
        writers=args.writers, concurrency=args.concurrency, tokens=args.tokens,
        batch=args.batch,
        cpus=os.cpu_count() or 0, single=single, cluster=three,
        measured_ratio=three.writes_per_s / single.writes_per_s,
        capacity_ratio=three.capacity_per_s / single.capacity_per_s, alerts=alerts)
    print(f"cluster / one node: measured {results.measured_ratio:.2f}x, "
          f"capacity {results.capacity_ratio:.2f}x (on {results.cpus} CPUs, "
          f"{args.writers} writers x {args.concurrency})")
    if args.out is not None:
        write_results(args.out, results)
    return results


if __name__ == "__main__":
    main()
