"""A fleet on a real Redis Cluster: three nodes (the bundled redis-server in cluster mode, no
replicas), three `latentguard serve` processes each given a different node as its only seed,
traffic through all of them while a node restarts.

Checked: every accepted trace is readable from every sidecar (listed and fetched), a rule
change made on one sidecar blocks on all three within a second, and the trace keys spread
over the nodes (none holds more than half). Nothing here skips: the nodes are the bundled
binary the embedded store uses, so a missing prerequisite fails the test.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from latentguard.server.store.keys import Keys
from latentguard.server.store.local_cluster import LocalCluster
from latentguard.v1 import (
    common_pb2,
    monitor_pb2,
    rules_pb2,
    rules_pb2_grpc,
    traces_pb2,
    traces_pb2_grpc,
)
from tests.server.fixtures import StreamDriver, build_sae, rows
from tests.server.processes import spawn, stop, target, wait_serving

SIDECARS = 3


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    # fsync always: an acknowledged write survives the node's restart whatever its timing.
    with LocalCluster(tmp_path / "cluster", 3, fsync_always=True) as c:
        yield c


@pytest.fixture
def fleet(tmp_path: Path, cluster: LocalCluster) -> Iterator[list[Path]]:
    sae = build_sae(tmp_path / "sae")
    datas = [tmp_path / f"sidecar{i}" for i in range(SIDECARS)]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i, data in enumerate(datas):
            data.mkdir()
            procs.append(spawn(data, sae, log=tmp_path / f"sidecar{i}.log",
                               LATENTGUARD_REDIS_URL=cluster.node_url(i)))
        for i, (proc, data) in enumerate(zip(procs, datas, strict=True)):
            wait_serving(proc, data, timeout=120, log=tmp_path / f"sidecar{i}.log")
        yield datas
    finally:
        for i, proc in enumerate(procs):
            if proc.poll() is None:
                stop(proc)
            print(f"--- sidecar{i} log ---\n" + (tmp_path / f"sidecar{i}.log").read_text()[-3000:])


class Traffic(threading.Thread):
    """Requests through one sidecar until stopped: each started with a prompt row, then ended;
    `accepted` holds the tags whose end the sidecar answered."""

    def __init__(self, data: Path, name: str) -> None:
        super().__init__(daemon=True)
        self.data, self.name_ = data, name
        self.accepted: list[str] = []
        self.halt = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with grpc.insecure_channel(target(self.data)) as channel:
                drive = StreamDriver(channel)
                drive.hello()
                step = 0
                while not self.halt.is_set():
                    tag = f"{self.name_}-{len(self.accepted)}"
                    step += 1
                    drive.step(step=step, started=[monitor_pb2.RequestStart(request_tag=tag)],
                               spans=[monitor_pb2.RowSpan(request_tag=tag, row_start=0,
                                                          positions=[0], token_ids=[5],
                                                          prefill=True)],
                               rows=rows({3: 1.0}))
                    step += 1
                    reply = drive.step(step=step,
                                       finished=[monitor_pb2.RequestEnd(request_tag=tag)])
                    assert reply.WhichOneof("kind") == "verdicts", reply
                    self.accepted.append(tag)
                    time.sleep(0.03)
                drive.close()
        except BaseException as exc:  # reported by the test
            self.error = exc


def listed(data: Path) -> dict[str, str]:
    """request tag -> trace id of every trace a sidecar lists (paging through)."""
    found: dict[str, str] = {}
    with grpc.insecure_channel(target(data)) as channel:
        stub = traces_pb2_grpc.TracesStub(channel)
        token = ""
        while True:
            page = stub.ListTraces(traces_pb2.ListTracesRequest(page_size=100,
                                                                page_token=token))
            found.update({t.request_tag: t.id for t in page.traces})
            token = page.next_page_token
            if not token:
                return found


def wait_listed(data: Path, tags: set[str], timeout: float = 60) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        found = listed(data)
        if tags <= set(found) or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def blocks(drive: StreamDriver, step: int, tag: str) -> bool:
    """One generated token with feature 9 high: does the sidecar block it?"""
    reply = drive.step(step=step, started=[monitor_pb2.RequestStart(request_tag=tag)],
                       spans=[monitor_pb2.RowSpan(request_tag=tag, row_start=0, positions=[0],
                                                  token_ids=[5])],
                       rows=rows({9: 5.0}))
    drive.step(step=step + 1, finished=[monitor_pb2.RequestEnd(request_tag=tag)])
    return any(v.kind == monitor_pb2.VERDICT_KIND_BLOCK for v in reply.verdicts.verdicts)


def test_fleet_on_a_three_node_cluster(cluster: LocalCluster, fleet: list[Path],
                                       tmp_path: Path) -> None:
    # ---- traffic through all three while a node restarts -----------------------------------
    config_node = cluster.owner(Keys("lg").revision)
    restarted = (config_node + 1) % 3  # a node holding traces and shards, and a sidecar's seed
    traffic = [Traffic(data, f"s{i}") for i, data in enumerate(fleet)]
    for t in traffic:
        t.start()
    time.sleep(2.0)
    before = sum(len(t.accepted) for t in traffic)
    cluster.restart(restarted, down_s=2.0)
    time.sleep(2.0)
    for t in traffic:
        t.halt.set()
    for t in traffic:
        t.join(30)
        assert t.error is None, t.error
    accepted = {tag for t in traffic for tag in t.accepted}
    assert before > 20 and len(accepted) > before + 20, (before, len(accepted))
    # The restart did refuse writes: what the sidecars accepted meanwhile went to their spools.
    logs = [(tmp_path / f"sidecar{i}.log").read_text() for i in range(SIDECARS)]
    assert any("records wait in" in log for log in logs)

    # ---- every accepted trace, from every sidecar --------------------------------------------
    views = [wait_listed(data, accepted) for data in fleet]
    for i, view in enumerate(views):
        missing = accepted - set(view)
        assert not missing, f"sidecar {i} lacks {len(missing)} of {len(accepted)}: " \
                            f"{sorted(missing)[:10]}"
    ids = views[0]
    for data in fleet:
        with grpc.insecure_channel(target(data)) as channel:
            stub = traces_pb2_grpc.TracesStub(channel)
            for tag in sorted(accepted):
                got = stub.GetTrace(traces_pb2.GetTraceRequest(id=ids[tag]))
                assert got.request_tag == tag and len(got.tokens) == 1

    # ---- trace keys spread over the nodes -----------------------------------------------------
    per_node = []
    for i in range(3):
        with cluster.client(i) as node:
            per_node.append(sum(1 for key in node.scan_iter(match="lg:trace:*", count=1000)
                                if not key.endswith(b":reviews")))
    print("trace keys per node:", per_node, "restarted node:", restarted)
    assert sum(per_node) == len(accepted)
    assert max(per_node) <= 0.5 * sum(per_node), per_node

    # ---- a rule change on one sidecar applies on all within a second --------------------------
    drivers = []
    channels = [grpc.insecure_channel(target(data)) for data in fleet]
    try:
        for channel in channels:
            drive = StreamDriver(channel)
            drive.hello()
            drivers.append(drive)
        assert not any(blocks(d, 1, f"before-rule-{i}") for i, d in enumerate(drivers))
        rule = rules_pb2.Rule(
            name="fleet-block", severity=common_pb2.SEVERITY_HIGH,
            when=rules_pb2.Condition(signal=rules_pb2.Signal(feature=9, threshold=1.0)),
            action=rules_pb2.Action(type=common_pb2.ACTION_TYPE_BLOCK))
        rules_pb2_grpc.RulesStub(channels[1]).PutRule(rules_pb2.PutRuleRequest(rule=rule))
        put_at = time.monotonic()
        seen: dict[int, float] = {}
        step = 10
        while len(seen) < len(drivers) and time.monotonic() - put_at < 3:
            step += 2
            for i, drive in enumerate(drivers):
                if i not in seen and blocks(drive, step, f"probe-{i}-{step}"):
                    seen[i] = time.monotonic() - put_at
            time.sleep(0.02)
        print("rule applied after (s):", seen)
        assert sorted(seen) == [0, 1, 2], seen
        assert max(seen.values()) < 1.0, seen
        for drive in drivers:
            drive.close()
    finally:
        for channel in channels:
            channel.close()
