"""The key layout for Redis Cluster: which keys share a slot, index shards merged with correct
paging, the cluster URL, and layout 1's traces moved at start."""

from __future__ import annotations

import json
import zlib
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from redis.crc import key_slot

from latentguard.server.records import (
    ReviewRecord,
    TraceFilter,
    new_trace_id,
    utcnow,
)
from latentguard.server.store import Store, StoreLayoutError
from latentguard.server.store.client import StoreURLError, cluster_nodes, connect, redacted
from latentguard.server.store.keys import INDEX_SHARDS, LAYOUT, Keys, LegacyKeys, shard_of
from latentguard.server.store.layout import ensure_layout
from tests.conftest import opened_store
from tests.server.test_store import hit, trace


def slot(key: str) -> int:
    return key_slot(key.encode())


def test_config_keys_share_one_slot_and_traces_and_shards_spread() -> None:
    k = Keys("lg")
    config = [k.object("rule", "a"), k.index("rule"), k.revision, k.history("rule", "a"),
              k.object("policy", "p"), k.index("policy"), k.layout, k.changes]
    assert len({slot(key) for key in config}) == 1
    trace_id = new_trace_id()
    assert slot(k.trace(trace_id)) == slot(k.trace_reviews(trace_id))
    # Each shard's keys share a slot; shard i's slot is in the i-th sixteenth of the range.
    for shard in range(INDEX_SHARDS):
        keys = [k.traces_all(shard), k.traces_by_status(shard, "flagged"),
                k.traces_by_rule(shard, "r{x}"), k.trace_rules(shard)]
        assert len({slot(key) for key in keys}) == 1
        assert slot(keys[0]) * INDEX_SHARDS // 16384 == shard
    ids = [new_trace_id() for _ in range(2000)]
    assert len({slot(k.trace(i)) for i in ids}) > 1800  # ~ all different
    per_shard = [sum(shard_of(i) == s for i in ids) for s in range(INDEX_SHARDS)]
    assert min(per_shard) > 2000 / INDEX_SHARDS / 2


def test_cluster_urls() -> None:
    url = "redis+cluster://user:p%40ss@10.0.0.1:7000,10.0.0.2:7001"
    assert cluster_nodes(url) == [("10.0.0.1", 7000), ("10.0.0.2", 7001)]
    assert "p%40ss" not in redacted(url) and "***" in redacted(url)
    client = connect(url)
    assert client.connection_kwargs["password"] == "p@ss"  # type: ignore[union-attr]
    assert client.connection_kwargs["username"] == "user"  # type: ignore[union-attr]
    with pytest.raises(StoreURLError, match="host:port"):
        connect("redis+cluster://10.0.0.1")
    with pytest.raises(StoreURLError, match="database 0"):
        connect("redis+cluster://10.0.0.1:7000/3")


@pytest.fixture(params=["embedded", "cluster"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    async with opened_store(request.param, request, tmp_path) as opened:
        yield opened


async def test_paging_merges_the_shards_in_order(store: Store) -> None:
    traces = [trace(*([hit("a", "high" if n % 3 else "low")] if n % 2 else []),
                    minutes_ago=200 - n) for n in range(150)]
    for t in traces:
        await store.traces.save(t)
    newest_first = [t.id for t in reversed(traces)]

    async def collect(page_size: int, **kw: object) -> list[str]:
        got, token = [], ""
        while True:
            page, token = await store.traces.list(
                TraceFilter(page_size=page_size, page_token=token, **kw))
            got += [p.id for p in page]
            if not token:
                return got

    assert await collect(7) == newest_first
    assert await collect(1000) == newest_first
    flagged = [t.id for t in reversed(traces) if t.hits]
    assert await collect(5, rule="a") == flagged
    assert await collect(9, status="flagged") == flagged
    high = [t.id for t in reversed(traces) if t.hits and t.hits[0].severity == "high"]
    assert await collect(4, min_severity="high") == high
    now = utcnow()
    window = [t.id for t in reversed(traces)
              if now - timedelta(minutes=120) <= t.started_at < now - timedelta(minutes=80)]
    assert await collect(6, start=now - timedelta(minutes=120),
                         end=now - timedelta(minutes=80)) == window


async def test_layout_1_traces_are_moved_at_start(store: Store) -> None:
    """Traces written in the layout before cluster support (every key under `{prefix}`)
    are readable after the next start, with their reviews, status, indexes and time to live."""
    old, client = LegacyKeys(store.keys.prefix), store.client
    await store.rules.put("kept", {"name": "kept"})
    await client.delete(store.keys.layout)
    written = [trace(hit("a"), minutes_ago=3), trace(minutes_ago=2), trace(hit("b"))]
    for t in written:  # as layout 1's TraceStore.save wrote them
        status = "flagged" if t.hits else "clean"
        summary = t.summary().model_copy(update={"reviews": [], "status": status})
        detail = json.dumps([x.model_dump(mode="json") for x in t.tokens]).encode()
        await client.hset(old.trace(t.id), mapping={
            "summary": summary.model_dump_json(), "detail": zlib.compress(detail),
            "status": status})
        await client.expire(old.trace(t.id), 3600)
        await client.zadd(old.traces_all, {t.id: 0})
        await client.zadd(old.traces_by_status(status), {t.id: 0})
        for rule in t.rules_hit:
            await client.zadd(old.traces_by_rule(rule), {t.id: 0})
            await client.sadd(old.trace_rules, rule)
    review = ReviewRecord(label="true_positive", reviewer="ann")
    await client.rpush(old.trace_reviews(written[0].id), review.model_dump_json())
    await client.hset(old.trace(written[0].id), "status", "reviewed")

    # The same Redis checked again, as the next sidecar to start does.
    assert await ensure_layout(client, store.keys) == 3
    assert int(await client.get(store.keys.layout)) == LAYOUT
    assert not await client.exists(old.traces_all, old.trace(written[1].id))
    page, _ = await store.traces.list(TraceFilter())
    assert [p.id for p in page] == [t.id for t in reversed(written)]
    got = await store.traces.get(written[0].id)
    assert got.status == "reviewed" and got.reviews[0].reviewer == "ann"
    assert got.tokens == written[0].tokens
    assert [p.id for p in (await store.traces.list(TraceFilter(rule="b")))[0]] == [
        written[2].id]
    assert 3000 < await client.ttl(store.keys.trace(written[1].id)) <= 3600
    assert (await store.rules.get("kept")).version == 1
    assert await ensure_layout(client, store.keys) == 0  # once


async def test_a_newer_layout_is_refused(tmp_path: Path) -> None:
    first = await Store.open(None, tmp_path)
    await first.client.set(first.keys.layout, str(LAYOUT + 1))
    await first.close()
    with pytest.raises(StoreLayoutError, match="newer latentguard"):
        await Store.open(None, tmp_path)



async def test_saving_a_big_batch_leaves_the_event_loop_free(tmp_path: Path) -> None:
    """The writer stores a spool segment in one call; its traces are serialised off the loop,
    which serves the Monitor streams meanwhile (issue 15: no stall above 50 ms)."""
    import asyncio
    import time

    from latentguard.server.records import FeatureValue, TokenRecord, TraceRecord

    store = await Store.open(None, tmp_path)
    try:
        tokens = [TokenRecord(position=i, token_id=i, text=" tok", top_features=[
            FeatureValue(feature=j, value=1.0) for j in range(8)]) for i in range(256)]
        batch = [TraceRecord(request_tag=f"r{n}", model="m", tokens=tokens) for n in range(64)]
        lags: list[float] = []
        done = asyncio.Event()

        async def ticker() -> None:
            while not done.is_set():
                t = time.perf_counter()
                await asyncio.sleep(0.001)
                lags.append(time.perf_counter() - t)

        tick = asyncio.create_task(ticker())
        began = time.perf_counter()
        await store.traces.save_many(batch)
        took = time.perf_counter() - began
        done.set()
        await tick
        assert (await store.traces.get(batch[-1].id)).tokens == tokens
        # Serialised inline, the 64 traces would hold the loop for the whole call (~0.3 s).
        assert max(lags) < 0.05, (max(lags), took)
    finally:
        await store.close()
