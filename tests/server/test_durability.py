"""A trace accepted is a trace stored, with real processes killed: an external redis-server and
the sidecar (`latentguard serve`), stopped with SIGTERM or SIGKILL mid-traffic.

"Accepted" means the sidecar answered the step that ended the request. The promise: nothing
accepted is lost while Redis is away or on SIGTERM, at most FLUSH_S (0.2 s) of it on SIGKILL,
and requests in flight at a crash are recorded as gaps.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from latentguard.server.store.embedded import RedisServer, free_port
from latentguard.v1 import monitor_pb2, traces_pb2, traces_pb2_grpc
from tests.server.fixtures import StreamDriver, build_sae, rows
from tests.server.processes import serve, stop, target


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis", port=free_port(), persistent=True)
    with server:
        yield server


def run_requests(data: Path, tags: list[str], *, finish: bool = True,
                 while_open: Callable[[], None] | None = None) -> None:
    """Each request: started with one prompt row, then ended (each step answered before the
    next is sent). With `finish=False` the requests stay open and `while_open` runs while the
    stream is still up (a crash under it: no end, no stream close)."""
    with grpc.insecure_channel(target(data)) as channel:
        drive = StreamDriver(channel)
        drive.hello()
        step = 0
        for tag in tags:
            step += 1
            reply = drive.step(step=step, started=[monitor_pb2.RequestStart(request_tag=tag)],
                               spans=[monitor_pb2.RowSpan(request_tag=tag, row_start=0,
                                                          positions=[0], token_ids=[5],
                                                          prefill=True)],
                               rows=rows({3: 1.0}))
            assert reply.WhichOneof("kind") == "verdicts", reply
            if finish:
                step += 1
                reply = drive.step(step=step,
                                   finished=[monitor_pb2.RequestEnd(request_tag=tag)])
                assert reply.WhichOneof("kind") == "verdicts", reply
        if not finish:
            time.sleep(1.0)  # past FLUSH_S: the opens are journaled
            assert while_open is not None
            while_open()
            return
        drive.close()


def stored_tags(data: Path, expect: int, timeout: float = 30.0) -> dict[str, traces_pb2.Trace]:
    """The traces the sidecar serves, once at least `expect` are there (or the timeout)."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target(data)) as channel:
        stub = traces_pb2_grpc.TracesStub(channel)
        while True:
            found = {t.request_tag: t for t in
                     stub.ListTraces(traces_pb2.ListTracesRequest(page_size=1000)).traces}
            if len(found) >= expect or time.monotonic() > deadline:
                return found
            time.sleep(0.2)


def kill(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)


def test_redis_down_then_sidecar_sigkilled_loses_nothing_accepted(
        tmp_path: Path, redis_server: RedisServer) -> None:
    data, sae = tmp_path / "data", build_sae(tmp_path / "sae")
    env = {"LATENTGUARD_REDIS_URL": redis_server.url}
    proc = serve(data, sae, **env)
    try:
        run_requests(data, [f"before-{i}" for i in range(5)])
        redis_server.stop()
        run_requests(data, [f"during-{i}" for i in range(40)])
        time.sleep(0.5)  # the promise allows losing the last FLUSH_S
    finally:
        kill(proc)
    redis_server.start()
    proc = serve(data, sae, **env)
    try:
        found = stored_tags(data, 45)
    finally:
        stop(proc)
    assert len(found) == 45, sorted(set(
        [f"before-{i}" for i in range(5)] + [f"during-{i}" for i in range(40)]) - set(found))


def test_sigterm_with_redis_down_stops_in_bounded_time_and_loses_nothing(
        tmp_path: Path, redis_server: RedisServer) -> None:
    data, sae = tmp_path / "data", build_sae(tmp_path / "sae")
    env = {"LATENTGUARD_REDIS_URL": redis_server.url, "LATENTGUARD_STOP_DRAIN_S": "2"}
    proc = serve(data, sae, **env)
    redis_server.stop()
    run_requests(data, [f"r{i}" for i in range(10)])
    began = time.monotonic()
    stop(proc, timeout=30)
    assert time.monotonic() - began < 15, "SIGTERM did not stop the sidecar in bounded time"
    redis_server.start()
    proc = serve(data, sae, **env)
    try:
        found = stored_tags(data, 10)
    finally:
        stop(proc)
    assert sorted(found) == sorted(f"r{i}" for i in range(10))


def test_requests_in_flight_at_a_crash_are_recorded_as_gaps(tmp_path: Path) -> None:
    data, sae = tmp_path / "data", build_sae(tmp_path / "sae")
    proc = serve(data, sae)  # the embedded store
    try:
        run_requests(data, ["done"])
        run_requests(data, [f"open-{i}" for i in range(8)], finish=False,
                     while_open=lambda: kill(proc))
    finally:
        if proc.poll() is None:
            kill(proc)
    proc = serve(data, sae)
    try:
        found = stored_tags(data, 9)
    finally:
        stop(proc)
    assert not found["done"].monitoring_gap
    gaps = {tag for tag, t in found.items() if t.monitoring_gap}
    assert gaps == {f"open-{i}" for i in range(8)}
    assert all(found[t].finish_reason == "incomplete" for t in gaps)
