"""Store contract: runs against the embedded Redis, an external one and a three-node Redis
Cluster reached through one of its nodes (see conftest)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from latentguard.monitors.rules import RuleHit
from latentguard.server.errors import InvalidArgument, NotFound, VersionConflict
from latentguard.server.records import (
    AlertRecord,
    ReviewRecord,
    TokenRecord,
    TraceFilter,
    TraceRecord,
    new_trace_id,
    utcnow,
)
from latentguard.server.store import Store
from tests.conftest import opened_store

SPEC = {"name": "r1", "when": {"signal": {"feature": 3, "threshold": 1.0}}}


@pytest.fixture(params=["embedded", "external", "cluster"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    async with opened_store(request.param, request, tmp_path) as opened:
        yield opened


def hit(rule: str, severity: str = "high", position: int = 4) -> RuleHit:
    return RuleHit(rule=rule, severity=severity, action="block", position=position,
                     score=2.5, explanation=f"{rule} fired")


def trace(*hits: RuleHit, minutes_ago: float = 0.0) -> TraceRecord:
    started = utcnow() - timedelta(minutes=minutes_ago)
    return TraceRecord(
        id=new_trace_id(started), started_at=started, request_tag="req", model="m",
        tokens=[TokenRecord(position=i, token_id=100 + i) for i in range(5)], hits=list(hits),
    )


async def test_rule_versions_and_conflicts(store: Store) -> None:
    v1 = await store.rules.put("r1", SPEC, expected_version=0, actor="alice")
    assert v1.version == 1
    with pytest.raises(VersionConflict):
        await store.rules.put("r1", SPEC, expected_version=0)
    v2 = await store.rules.put("r1", {**SPEC, "description": "x"}, expected_version=1)
    assert v2.version == 2
    got = await store.rules.get("r1")
    assert got.version == 2 and got.spec["description"] == "x"
    with pytest.raises(VersionConflict):
        await store.rules.delete("r1", expected_version=1)
    await store.rules.delete("r1", expected_version=2)
    with pytest.raises(NotFound):
        await store.rules.get("r1")
    assert await store.rules.list() == []
    # A re-created rule continues the sequence, so a writer holding version 2 still conflicts.
    v3 = await store.rules.put("r1", SPEC)
    assert v3.version == 3
    assert [h["version"] for h in await store.rules.history("r1")] == [3, 2, 1]
    assert await store.revision() == 4


async def test_policies_are_separate_from_rules(store: Store) -> None:
    await store.rules.put("same", SPEC)
    await store.policies.put("same", {"name": "same", "rules": ["*"]})
    assert [p.name for p in await store.policies.list()] == ["same"]
    await store.policies.delete("same")
    assert (await store.rules.get("same")).version == 1


async def test_change_notices_arrive(store: Store) -> None:
    seen: list[dict] = []
    got = asyncio.Event()

    async def on_change(notice: dict) -> None:
        seen.append(notice)
        got.set()

    watcher = asyncio.create_task(store.watch_changes(on_change, poll_s=0.2))
    await asyncio.sleep(0.3)
    await store.rules.put("r1", SPEC)
    await asyncio.wait_for(got.wait(), 2)
    watcher.cancel()
    assert seen[0]["name"] == "r1" and seen[0]["kind"] == "rule" and seen[0]["version"] == 1


async def test_a_failed_change_callback_is_delivered_again(store: Store) -> None:
    """The watch never ends on an error: a change whose reload failed comes again with the
    next revision poll."""
    calls: list[dict] = []
    again = asyncio.Event()

    async def on_change(notice: dict) -> None:
        calls.append(notice)
        if len(calls) == 1:
            raise RuntimeError("reload failed")
        again.set()

    watcher = asyncio.create_task(store.watch_changes(on_change, poll_s=0.2))
    await asyncio.sleep(0.3)
    await store.rules.put("r1", SPEC)
    await asyncio.wait_for(again.wait(), 5)
    assert not watcher.done()
    watcher.cancel()
    assert calls[0]["name"] == "r1" and calls[1]["revision"] == 1


async def test_trace_roundtrip_and_review(store: Store) -> None:
    t = trace(hit("unsafe-code"))
    await store.traces.save(t)
    got = await store.traces.get(t.id)
    assert got.tokens == t.tokens and got.hits[0].rule == "unsafe-code"
    assert got.status == "flagged"
    reviewed = await store.traces.review(
        t.id, ReviewRecord(label="false_positive", reviewer="bob", note="benign")
    )
    assert reviewed.status == "reviewed"
    assert reviewed.reviews[0].reviewer == "bob"
    page, _ = await store.traces.list(TraceFilter(status="flagged"))
    assert page == []
    page, _ = await store.traces.list(TraceFilter(status="reviewed"))
    assert [p.id for p in page] == [t.id]
    assert page[0].tokens == []  # listings carry summaries only
    with pytest.raises(NotFound):
        await store.traces.get(new_trace_id())
    with pytest.raises(NotFound):
        await store.traces.review(new_trace_id(), ReviewRecord(label="escalate", reviewer="x"))


async def test_trace_filters_and_paging(store: Store) -> None:
    traces = [
        trace(minutes_ago=50),
        trace(hit("a", "low"), minutes_ago=40),
        trace(hit("b", "critical"), minutes_ago=30),
        trace(hit("a", "high"), hit("b", "low"), minutes_ago=20),
        trace(minutes_ago=10),
    ]
    for t in traces:
        await store.traces.save(t)
    ids = [t.id for t in traces]

    async def listed(**kw: object) -> list[str]:
        page, _ = await store.traces.list(TraceFilter(**kw))
        return [p.id for p in page]

    assert await listed() == ids[::-1]
    assert await listed(rule="a") == [ids[3], ids[1]]
    assert await listed(min_severity="high") == [ids[3], ids[2]]
    assert await listed(rule="b", min_severity="critical") == [ids[2]]
    assert await listed(status="clean") == [ids[4], ids[0]]
    now = utcnow()
    assert await listed(start=now - timedelta(minutes=35), end=now - timedelta(minutes=15)) == [
        ids[3], ids[2]
    ]
    collected, token = [], ""
    while True:
        page, token = await store.traces.list(TraceFilter(page_size=2, page_token=token))
        collected += [p.id for p in page]
        if not token:
            break
    assert collected == ids[::-1]
    with pytest.raises(InvalidArgument):
        await store.traces.list(TraceFilter(page_token="zz"))


async def test_retention_drops_old_traces(store: Store) -> None:
    store.traces.retention = timedelta(minutes=30)
    old, new = trace(minutes_ago=60), trace(minutes_ago=1)
    await store.traces.save(old)
    await store.traces.save(new)
    page, _ = await store.traces.list(TraceFilter())
    assert [p.id for p in page] == [new.id]
    ttl = await store.client.ttl(store.keys.trace(new.id))
    assert 0 < ttl <= 30 * 60


async def test_alert_fanout_and_groups(store: Store) -> None:
    def alert(n: int) -> AlertRecord:
        return AlertRecord(trace_id=new_trace_id(), request_tag=f"r{n}", hit=hit("x"))

    first = await store.alerts.publish(alert(0))
    await store.alerts.publish(alert(1))
    replay = store.alerts.follow("0")
    assert [(await anext(replay)).request_tag for _ in range(2)] == ["r0", "r1"]
    after = store.alerts.follow(first)
    assert (await anext(after)).request_tag == "r1"

    # Two consumers of one group share new alerts: each alert goes to exactly one of them.
    c1, c2 = store.alerts.consume("g", "c1"), store.alerts.consume("g", "c2")
    pending = [asyncio.ensure_future(anext(c1)), asyncio.ensure_future(anext(c2))]
    await asyncio.sleep(0.2)  # let both join the group before publishing
    for n in (2, 3):
        await store.alerts.publish(alert(n))
    got = await asyncio.wait_for(asyncio.gather(*pending), 5)
    assert sorted(a.request_tag for a in got) == ["r2", "r3"]
    for gen in (replay, after, c1, c2):
        await gen.aclose()


async def test_embedded_store_survives_restart(tmp_path) -> None:
    store = await Store.open(None, tmp_path)
    await store.rules.put("kept", SPEC)
    t = trace(hit("kept"))
    await store.traces.save(t)
    await store.traces.review(t.id, ReviewRecord(label="true_positive", reviewer="r"))
    await store.close()

    reopened = await Store.open(None, tmp_path)
    try:
        assert (await reopened.rules.get("kept")).version == 1
        got = await reopened.traces.get(t.id)
        assert got.status == "reviewed" and got.reviews[0].label == "true_positive"
    finally:
        await reopened.close()


async def test_a_second_store_on_the_same_data_dir_is_refused(tmp_path) -> None:
    from latentguard.server.store.embedded import RedisServerError

    first = await Store.open(None, tmp_path)
    try:
        with pytest.raises(RedisServerError, match="another sidecar"):
            await Store.open(None, tmp_path)
    finally:
        await first.close()


def test_redis_of_a_killed_sidecar_is_replaced(tmp_path) -> None:
    """A sidecar killed with SIGKILL leaves no Redis holding its data directory."""
    import signal
    import subprocess
    import sys
    import time

    code = (
        "import asyncio, sys\n"
        "from pathlib import Path\n"
        "from latentguard.server.store import Store\n"
        "async def main():\n"
        "    s = await Store.open(None, Path(sys.argv[1]))\n"
        "    await s.rules.put('kept', {'name': 'kept'})\n"
        "    print('ready', flush=True)\n"
        "    await asyncio.sleep(60)\n"
        "asyncio.run(main())\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"ready"
    time.sleep(1.2)  # past appendfsync everysec
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    async def reopen() -> int:
        store = await Store.open(None, tmp_path)
        try:
            return (await store.rules.get("kept")).version
        finally:
            await store.close()

    import asyncio

    assert asyncio.run(reopen()) == 1
