"""Traces with retention, list indexes and reviews, spread over a Redis Cluster's slots.

A trace is one hash: `summary` (JSON without tokens), `detail` (zlib-compressed JSON of the
tokens) and `status`; its reviews are a list beside it, in the trace's own slot (`keys.py`).
Trace ids start with the start time in hex, so sorted sets scored 0 and ranged by id
(ZRANGEBYLEX) are time indexes: one of all traces, one per rule that fired, one per status,
each split into `INDEX_SHARDS` shards. Listing merges the shards of the most selective index
newest first and checks the remaining filters on the summaries.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import zlib
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from functools import partial

from latentguard.monitors.rules import severity_rank
from latentguard.server.errors import InvalidArgument, NotFound, quoted
from latentguard.server.records import (
    ReviewRecord,
    TokenRecord,
    TraceFilter,
    TraceRecord,
    TraceStatus,
)
from latentguard.server.store.client import Client
from latentguard.server.store.keys import INDEX_SHARDS, Keys, shard_of, text

# Most index entries one ListTraces call examines before it returns a partial page.
SCAN_LIMIT = 5000
_BATCH = 200
STATUSES = ("clean", "flagged", "reviewed")
TRIM_EVERY = 64
"""Saves between two trims of every index (each save trims the indexes it writes)."""


def _encode(trace: TraceRecord) -> tuple[str, bytes, TraceStatus]:
    """A trace's stored fields: summary JSON (no tokens), compressed tokens, first status."""
    detail = json.dumps([t.model_dump(mode="json") for t in trace.tokens]).encode()
    status: TraceStatus = "flagged" if trace.hits else "clean"
    summary = trace.summary().model_copy(update={"reviews": [], "status": status})
    return summary.model_dump_json(), zlib.compress(detail, 6), status


def _id_bound(at: datetime) -> str:
    return f"{int(at.timestamp() * 1000):013x}"


class TraceStore:
    def __init__(self, client: Client, keys: Keys, retention: timedelta) -> None:
        self._r = client
        self._keys = keys
        self.retention = retention
        self._saves = 0

    def _cutoff(self) -> str:
        return "(" + _id_bound(datetime.now().astimezone() - self.retention)

    async def save(self, trace: TraceRecord) -> None:
        """Stores a finished (or cut-off) trace and indexes it; idempotent for the same id."""
        await self.save_many([trace])

    async def save_many(self, traces: Sequence[TraceRecord]) -> None:
        """Stores traces and indexes them, in one pipeline (idempotent, like `save`).

        Per trace: its hash (its slot), then its index entries and the trim of those indexes
        (its shard's slot); no command spans slots, and on a cluster the pipeline goes to
        each node at once. A reader may see an entry a moment before its hash, which it skips
        like an expired one."""
        ttl = max(1, int(self.retention.total_seconds()))
        cutoff = self._cutoff()
        k = self._keys
        # Serialising is ~1 ms per 64-token trace: off the event loop, which serves the
        # Monitor streams meanwhile.
        encoded = await asyncio.to_thread(lambda: [_encode(t) for t in traces])
        async with self._r.pipeline(transaction=False) as pipe:
            for trace, (summary, detail, status) in zip(traces, encoded, strict=True):
                key = k.trace(trace.id)
                shard = shard_of(trace.id)
                pipe.hset(key, mapping={"summary": summary, "detail": detail})
                pipe.hsetnx(key, "status", status)  # a review may have landed already
                pipe.expire(key, ttl)
                touched = [k.traces_all(shard), k.traces_by_status(shard, status)]
                touched += [k.traces_by_rule(shard, rule) for rule in trace.rules_hit]
                for index in touched:
                    pipe.zadd(index, {trace.id: 0})
                    pipe.zremrangebylex(index, "-", cutoff)
                if trace.rules_hit:
                    pipe.sadd(k.trace_rules(shard), *trace.rules_hit)
            await pipe.execute()
        before, self._saves = self._saves, self._saves + len(traces)
        if self._saves // TRIM_EVERY != before // TRIM_EVERY:
            await self.trim()

    async def trim(self) -> int:
        """Drops index entries older than the retention (the hashes expire on their own);
        returns how many traces left the time index."""
        cutoff = self._cutoff()
        k = self._keys
        async with self._r.pipeline(transaction=False) as pipe:
            for shard in range(INDEX_SHARDS):
                pipe.smembers(k.trace_rules(shard))
            rules = await pipe.execute()
        async with self._r.pipeline(transaction=False) as pipe:
            for shard in range(INDEX_SHARDS):
                pipe.zremrangebylex(k.traces_all(shard), "-", cutoff)
                for index in [k.traces_by_status(shard, s) for s in STATUSES] + [
                        k.traces_by_rule(shard, text(r)) for r in rules[shard]]:
                    pipe.zremrangebylex(index, "-", cutoff)
            removed = await pipe.execute()
        per_shard = 1 + len(STATUSES)
        starts, at = [], 0
        for shard in range(INDEX_SHARDS):
            starts.append(at)
            at += per_shard + len(rules[shard])
        return sum(int(removed[i]) for i in starts)

    async def get(self, trace_id: str) -> TraceRecord:
        async with self._r.pipeline(transaction=False) as pipe:
            pipe.hgetall(self._keys.trace(trace_id))
            pipe.lrange(self._keys.trace_reviews(trace_id), 0, -1)
            fields, reviews = await pipe.execute()
        if b"summary" not in fields:
            raise NotFound(f"no trace with id {quoted(trace_id)} (unknown or past retention)",
                           field="id")
        record = TraceRecord.model_validate_json(fields[b"summary"])
        tokens = json.loads(zlib.decompress(fields[b"detail"]))
        return record.model_copy(update={
            "tokens": [TokenRecord.model_validate(t) for t in tokens],
            "reviews": [ReviewRecord.model_validate_json(r) for r in reviews],
            "status": fields[b"status"].decode(),
        })

    async def review(self, trace_id: str, review: ReviewRecord) -> TraceRecord:
        key = self._keys.trace(trace_id)
        if not await self._r.hexists(key, "summary"):
            raise NotFound(f"no trace with id {quoted(trace_id)} (unknown or past retention)",
                           field="id")
        ttl = await self._r.ttl(key)
        reviews = self._keys.trace_reviews(trace_id)
        async with self._r.pipeline(transaction=True) as pipe:  # the trace's slot
            pipe.rpush(reviews, review.model_dump_json())
            if ttl > 0:
                pipe.expire(reviews, ttl)
            pipe.hset(key, "status", "reviewed")
            await pipe.execute()
        shard = shard_of(trace_id)
        k = self._keys
        # The shard's slot. Listing reads the status from the hash, so an index a moment
        # behind it (or left so by a crash here) only costs a skipped entry.
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.zadd(k.traces_by_status(shard, "reviewed"), {trace_id: 0})
            for s in ("clean", "flagged"):
                pipe.zrem(k.traces_by_status(shard, s), trace_id)
            await pipe.execute()
        return await self.get(trace_id)

    async def list(self, flt: TraceFilter) -> tuple[list[TraceRecord], str]:
        """One page of summaries, newest first, and the token of the next page ("" at the end).

        The page token is the last id examined: every shard is read below it, so pages are
        the same as from one index."""
        k = self._keys
        index: Callable[[int], str]
        if flt.rule:
            index = partial(k.traces_by_rule, rule=flt.rule)
        elif flt.status is not None:
            index = partial(k.traces_by_status, status=flt.status)
        else:
            index = k.traces_all
        upper = "+" if flt.end is None else "(" + _id_bound(flt.end)
        if flt.page_token:
            if not all(c in "0123456789abcdef" for c in flt.page_token):
                raise InvalidArgument("page_token is not one this server issued",
                                      field="page_token")
            upper = "(" + flt.page_token if upper == "+" else min(upper, "(" + flt.page_token)
        lower = "-" if flt.start is None else "[" + _id_bound(flt.start)
        min_rank = severity_rank(flt.min_severity) if flt.min_severity else -1
        # Filters the index does not answer make most entries misses: read more at a time.
        sparse = min_rank >= 0 or bool(flt.rule and flt.status is not None)
        page: builtins.list[TraceRecord] = []
        scanned = 0
        last = ""
        while len(page) < flt.page_size and scanned < SCAN_LIMIT:
            batch = _BATCH if sparse else min(_BATCH, flt.page_size - len(page) + 1)
            ids, complete = await self._merged(index, upper, lower, batch)
            if not ids:
                return page, ""
            pos = 0
            while pos < len(ids):
                chunk = ids[pos:pos + max(8, flt.page_size - len(page))]
                pos += len(chunk)
                scanned += len(chunk)
                async with self._r.pipeline(transaction=False) as pipe:
                    for trace_id in chunk:
                        pipe.hmget(k.trace(trace_id), ["summary", "status"])
                    rows = await pipe.execute()
                for trace_id, (summary, status) in zip(chunk, rows, strict=True):
                    last = trace_id
                    if summary is None:
                        continue  # expired, index not trimmed yet
                    record = TraceRecord.model_validate_json(summary)
                    record = record.model_copy(update={"status": status.decode()})
                    if self._matches(record, flt, min_rank):
                        page.append(record)
                        if len(page) == flt.page_size:
                            return page, last
            if complete:
                return page, ""
            upper = "(" + last
        return page, last

    async def _merged(self, index: Callable[[int], str], upper: str, lower: str,
                      batch: int) -> tuple[builtins.list[str], bool]:
        """Ids of every shard of `index` in (lower, upper), newest first, as far as all shards
        are known: up to `batch` from each shard, cut at the highest of the lowest ids of the
        shards that had more. True when no shard has more."""
        async with self._r.pipeline(transaction=False) as pipe:
            for shard in range(INDEX_SHARDS):
                pipe.zrevrangebylex(index(shard), upper, lower, start=0, num=batch)
            found = [[text(i) for i in ids] for ids in await pipe.execute()]
        cutoff = max((ids[-1] for ids in found if len(ids) == batch), default="")
        merged = sorted((i for ids in found for i in ids if i >= cutoff), reverse=True)
        return merged, cutoff == ""

    @staticmethod
    def _matches(record: TraceRecord, flt: TraceFilter, min_rank: int) -> bool:
        status: TraceStatus = record.status
        if flt.status is not None and status != flt.status:
            return False
        if flt.rule and flt.rule not in record.rules_hit:
            return False
        if min_rank >= 0:
            if not record.hits or severity_rank(record.max_severity) < min_rank:
                return False
        return True
