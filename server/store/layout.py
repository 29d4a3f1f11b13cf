"""The stored key layout, checked at start, and the move of layout 1's traces into layout 2.

Layout 1 kept every key under the hash tag `{prefix}`; layout 2 (`keys.py`) keeps the config
there and spreads traces and index shards over the slots. Rules, policies, the revision and
the alert stream have the same keys in both, so only traces move: each is copied to its new
keys (hash, reviews, time left to live) and indexed, then its old keys are deleted. One
sidecar moves them (a lock in the config slot); others starting meanwhile wait for it.
"""

from __future__ import annotations

import asyncio
import logging
import time

from latentguard.server.records import TraceRecord
from latentguard.server.store.client import Client
from latentguard.server.store.keys import LAYOUT, Keys, LegacyKeys, shard_of, text

log = logging.getLogger(__name__)

_BATCH = 500
LOCK_S = 300
"""How long a migration may hold the lock between two batches."""


class StoreLayoutError(RuntimeError):
    """The store holds data in a layout this version cannot read; the message says what to
    do."""


async def ensure_layout(client: Client, keys: Keys, wait_s: float = LOCK_S) -> int:
    """Checks the stored layout, moves layout 1's traces if there are any, and records the
    layout; returns how many traces were moved."""
    found = await client.get(keys.layout)
    if found is not None:
        stored = int(found)
        if stored == LAYOUT:
            return 0
        raise StoreLayoutError(
            f"the store (key prefix {keys.prefix!r}) holds data in key layout {stored}, written "
            f"by a newer latentguard; this version reads layout {LAYOUT}: upgrade this sidecar, "
            "or give it its own LATENTGUARD_REDIS_PREFIX")
    lock = f"{keys.base}:layout-lock"
    deadline = time.monotonic() + wait_s
    while not await client.set(lock, "1", nx=True, ex=LOCK_S):
        if await client.get(keys.layout) is not None:
            return 0
        if time.monotonic() > deadline:
            raise StoreLayoutError(
                f"another sidecar has been moving traces to key layout {LAYOUT} for over "
                f"{wait_s:.0f} s (lock {lock}); start again once it is done, or delete the "
                "lock if that sidecar died")
        await asyncio.sleep(0.5)
    try:
        if await client.get(keys.layout) is not None:
            return 0
        moved = await _move_traces(client, keys, LegacyKeys(keys.prefix), lock)
        await client.set(keys.layout, str(LAYOUT))
        return moved
    finally:
        await client.delete(lock)


async def _move_traces(client: Client, keys: Keys, old: LegacyKeys, lock: str) -> int:
    if not await client.exists(old.traces_all):
        return 0
    total = int(await client.zcard(old.traces_all))
    log.warning("moving %d traces to the key layout %d of Redis Cluster support; this is "
                "done once", total, LAYOUT)
    moved = 0
    while True:
        ids = [text(i) for i in await client.zrangebylex(old.traces_all, "-", "+", 0, _BATCH)]
        if not ids:
            break
        async with client.pipeline(transaction=False) as pipe:
            for trace_id in ids:
                pipe.hgetall(old.trace(trace_id))
                pipe.pttl(old.trace(trace_id))
                pipe.lrange(old.trace_reviews(trace_id), 0, -1)
            rows = await pipe.execute()
        async with client.pipeline(transaction=False) as pipe:
            for n, trace_id in enumerate(ids):
                fields, ttl_ms, reviews = rows[3 * n:3 * n + 3]
                if b"summary" not in fields:
                    continue  # expired
                key, shard = keys.trace(trace_id), shard_of(trace_id)
                status = text(fields.get(b"status", b"clean"))
                pipe.hset(key, mapping=fields)
                if ttl_ms > 0:
                    pipe.pexpire(key, ttl_ms)
                if reviews:
                    pipe.delete(keys.trace_reviews(trace_id))
                    pipe.rpush(keys.trace_reviews(trace_id), *reviews)
                    if ttl_ms > 0:
                        pipe.pexpire(keys.trace_reviews(trace_id), ttl_ms)
                pipe.zadd(keys.traces_all(shard), {trace_id: 0})
                pipe.zadd(keys.traces_by_status(shard, status), {trace_id: 0})
                rules = TraceRecord.model_validate_json(fields[b"summary"]).rules_hit
                for rule in rules:
                    pipe.zadd(keys.traces_by_rule(shard, rule), {trace_id: 0})
                if rules:
                    pipe.sadd(keys.trace_rules(shard), *rules)
                moved += 1
            await pipe.execute()
        async with client.pipeline(transaction=True) as pipe:  # all in `{prefix}`
            for trace_id in ids:
                pipe.delete(old.trace(trace_id), old.trace_reviews(trace_id))
            pipe.zrem(old.traces_all, *ids)
            pipe.expire(lock, LOCK_S)
            await pipe.execute()
        log.info("moved %d of %d traces", moved, total)
    rules = [text(r) for r in await client.smembers(old.trace_rules)]
    await client.delete(old.traces_all, old.trace_rules,
                        *(old.traces_by_status(s) for s in ("clean", "flagged", "reviewed")),
                        *(old.traces_by_rule(r) for r in rules))
    log.warning("moved %d traces to key layout %d", moved, LAYOUT)
    return moved
