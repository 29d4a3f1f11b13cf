"""Soak: many Monitor streams against one sidecar process for minutes, as a busy vLLM would
drive it, to show that memory stays flat, nothing errors and verdicts stay fast.

Each stream loops: start a request with a prompt of `--prompt` rows, decode `--tokens` steps of
one row, end it; every step is answered before the next (as a sync policy would wait). The
sidecar's RSS is sampled every second from /proc. The tiny random SAE of the tests (d_in 64)
keeps the encode cheap, so what is measured is the sidecar's own per-request cost.

    python -m bench.soak --streams 32 --minutes 10 --out bench/results/soak.json
"""

from __future__ import annotations

import argparse
import dataclasses
import queue
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from bench.common import write_results
from bench.serving import sidecar_process
from latentguard.lab.tinymodel import HIDDEN, build_tiny_sae
from latentguard.v1 import common_pb2, monitor_pb2, monitor_pb2_grpc


@dataclass
class StreamStats:
    requests: int = 0
    steps: int = 0
    errors: int = 0
    latencies_ms: list[float] = dataclasses.field(default_factory=list)


@dataclass
class SoakResults:
    command: str
    streams: int
    seconds: float
    requests: int
    steps: int
    errors: int
    verdict_ms_p50: float
    verdict_ms_p99: float
    rss_mb_start: float
    rss_mb_peak: float
    rss_mb_end: float
    rss_mb: list[float]
    """The sidecar's RSS once a second."""


def rows_tensor(n: int, seed: int) -> common_pb2.Tensor:
    data = np.random.default_rng(seed).standard_normal((n, HIDDEN), dtype=np.float32)
    return common_pb2.Tensor(dtype=common_pb2.DTYPE_FLOAT32, shape=[n, HIDDEN],
                             data=data.tobytes())


def drive(target: str, index: int, stop: threading.Event, prompt: int, tokens: int,
          stats: StreamStats) -> None:
    with grpc.insecure_channel(target) as channel:
        stub = monitor_pb2_grpc.MonitorStub(channel)
        outbox: queue.Queue[monitor_pb2.MonitorMessage | None] = queue.Queue()
        outbox.put(monitor_pb2.MonitorMessage(hello=monitor_pb2.Hello(client=f"soak-{index}",
                                                                      d_model=HIDDEN)))
        replies = stub.Stream(iter(outbox.get, None))
        next(replies)  # Ready
        step = 0
        decode_row = rows_tensor(1, index)
        prefill_rows = rows_tensor(prompt, index)

        def send(batch: monitor_pb2.StepBatch) -> None:
            t0 = time.perf_counter()
            outbox.put(monitor_pb2.MonitorMessage(step=batch))
            reply = next(replies)
            stats.latencies_ms.append((time.perf_counter() - t0) * 1000)
            stats.steps += 1
            if reply.WhichOneof("kind") != "verdicts":
                stats.errors += 1

        while not stop.is_set():
            tag = f"s{index}-r{stats.requests}"
            step += 1
            send(monitor_pb2.StepBatch(
                step=step, started=[monitor_pb2.RequestStart(request_tag=tag)],
                spans=[monitor_pb2.RowSpan(request_tag=tag, row_start=0,
                                           positions=list(range(prompt)),
                                           token_ids=[1] * prompt, prefill=True)],
                rows=prefill_rows))
            for pos in range(prompt, prompt + tokens):
                step += 1
                send(monitor_pb2.StepBatch(step=step, spans=[monitor_pb2.RowSpan(
                    request_tag=tag, row_start=0, positions=[pos], token_ids=[2])],
                    rows=decode_row))
            step += 1
            send(monitor_pb2.StepBatch(step=step, finished=[
                monitor_pb2.RequestEnd(request_tag=tag, completion_tokens=tokens)]))
            stats.requests += 1
        outbox.put(None)
        for _ in replies:
            pass


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run(streams: int, seconds: float, prompt: int, tokens: int, command: str) -> SoakResults:
    with tempfile.TemporaryDirectory(prefix="latentguard-soak-") as tmp:
        sae = build_tiny_sae(Path(tmp) / "sae")
        with sidecar_process(Path(tmp) / "data", sae=sae) as sidecar:
            pid = sidecar.proc.pid
            stop = threading.Event()
            stats = [StreamStats() for _ in range(streams)]
            threads = [threading.Thread(target=drive, args=(sidecar.target, i, stop, prompt,
                                                            tokens, stats[i]), daemon=True)
                       for i in range(streams)]
            samples = [rss_mb(pid)]
            began = time.monotonic()
            for t in threads:
                t.start()
            with Progress(TextColumn("{task.description}"), BarColumn(),
                          TimeRemainingColumn()) as bar:
                task = bar.add_task("soak", total=seconds)
                while time.monotonic() - began < seconds:
                    time.sleep(1.0)
                    samples.append(rss_mb(pid))
                    bar.update(task, completed=time.monotonic() - began, description=(
                        f"{sum(s.requests for s in stats)} requests, "
                        f"RSS {samples[-1]:.0f} MB"))
            stop.set()
            for t in threads:
                t.join(60)
            elapsed = time.monotonic() - began
    latencies = sorted(x for s in stats for x in s.latencies_ms)
    return SoakResults(
        command=command, streams=streams, seconds=round(elapsed, 1),
        requests=sum(s.requests for s in stats), steps=sum(s.steps for s in stats),
        errors=sum(s.errors for s in stats),
        verdict_ms_p50=round(statistics.median(latencies), 3) if latencies else 0.0,
        verdict_ms_p99=round(latencies[int(0.99 * (len(latencies) - 1))], 3)
        if latencies else 0.0,
        rss_mb_start=round(samples[0], 1), rss_mb_peak=round(max(samples), 1),
        rss_mb_end=round(samples[-1], 1), rss_mb=[round(x, 1) for x in samples])


def main(argv: list[str] | None = None) -> SoakResults:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=32)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--prompt", type=int, default=32, help="prompt rows per request")
    parser.add_argument("--tokens", type=int, default=64, help="decode steps per request")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    command = "python -m bench.soak " + " ".join(argv if argv is not None else sys.argv[1:])
    results = run(args.streams, args.minutes * 60, args.prompt, args.tokens, command)
    print(f"{results.requests} requests, {results.steps} steps in {results.seconds:.0f} s by "
          f"{results.streams} streams; errors {results.errors}; verdict p50 "
          f"{results.verdict_ms_p50:.2f} ms, p99 {results.verdict_ms_p99:.2f} ms; sidecar RSS "
          f"{results.rss_mb_start:.0f} -> peak {results.rss_mb_peak:.0f} -> end "
          f"{results.rss_mb_end:.0f} MB")
    if args.out:
        write_results(args.out, results)
    return results


if __name__ == "__main__":
    main()
