"""Traces with retention, list indexes and reviews.

A trace is one hash: `summary` (JSON without tokens), `detail` (zlib-compressed JSON of the
tokens) and `status`; its reviews are a list beside it. Trace ids start with the start time in
hex, so sorted sets scored 0 and ranged by id (ZRANGEBYLEX) are time indexes: one of all traces,
one per rule that fired, one per status. Listing walks the most selective index newest first
and checks the remaining filters on the summaries.
"""

from __future__ import annotations

import json
import zlib
from datetime import datetime, timedelta

import redis.asyncio as aioredis

from latentguard.monitors.rules import severity_rank
from latentguard.server.errors import InvalidArgument, NotFound, quoted
from latentguard.server.records import (
    ReviewRecord,
    TokenRecord,
    TraceFilter,
    TraceRecord,
    TraceStatus,
)
from latentguard.server.store.keys import Keys, text

# Most index entries one ListTraces call examines before it returns a partial page.
SCAN_LIMIT = 5000
_BATCH = 200


def _id_bound(at: datetime) -> str:
    return f"{int(at.timestamp() * 1000):013x}"


class TraceStore:
    def __init__(self, client: aioredis.Redis, keys: Keys, retention: timedelta) -> None:
        self._r = client
        self._keys = keys
        self.retention = retention

    async def save(self, trace: TraceRecord) -> None:
        """Stores a finished (or cut-off) trace and indexes it; idempotent for the same id."""
        key = self._keys.trace(trace.id)
        ttl = max(1, int(self.retention.total_seconds()))
        detail = json.dumps([t.model_dump(mode="json") for t in trace.tokens]).encode()
        status = "flagged" if trace.hits else "clean"
        summary = trace.summary().model_copy(update={"reviews": [], "status": status})
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={
                "summary": summary.model_dump_json(), "detail": zlib.compress(detail, 6),
            })
            pipe.hsetnx(key, "status", status)  # a review may have landed already
            pipe.expire(key, ttl)
            pipe.zadd(self._keys.traces_all, {trace.id: 0})
            pipe.zadd(self._keys.traces_by_status(status), {trace.id: 0})
            for rule in trace.rules_hit:
                pipe.zadd(self._keys.traces_by_rule(rule), {trace.id: 0})
                pipe.sadd(self._keys.trace_rules, rule)
            await pipe.execute()
        await self.trim()

    async def trim(self) -> int:
        """Drops index entries older than the retention (the hashes expire on their own)."""
        cutoff = "(" + _id_bound(datetime.now().astimezone() - self.retention)
        rules = await self._r.smembers(self._keys.trace_rules)
        index_keys = [self._keys.traces_all] + [
            self._keys.traces_by_status(s) for s in ("clean", "flagged", "reviewed")
        ] + [self._keys.traces_by_rule(text(r)) for r in rules]
        async with self._r.pipeline(transaction=False) as pipe:
            for k in index_keys:
                pipe.zremrangebylex(k, "-", cutoff)
            removed = await pipe.execute()
        return int(removed[0])

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
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.rpush(self._keys.trace_reviews(trace_id), review.model_dump_json())
            if ttl > 0:
                pipe.expire(self._keys.trace_reviews(trace_id), ttl)
            pipe.hset(key, "status", "reviewed")
            for s in ("clean", "flagged"):
                pipe.zrem(self._keys.traces_by_status(s), trace_id)
            pipe.zadd(self._keys.traces_by_status("reviewed"), {trace_id: 0})
            await pipe.execute()
        return await self.get(trace_id)

    async def list(self, flt: TraceFilter) -> tuple[list[TraceRecord], str]:
        """One page of summaries, newest first, and the token of the next page ("" at the end)."""
        if flt.rule:
            index = self._keys.traces_by_rule(flt.rule)
        elif flt.status is not None:
            index = self._keys.traces_by_status(flt.status)
        else:
            index = self._keys.traces_all
        upper = "+" if flt.end is None else "(" + _id_bound(flt.end)
        if flt.page_token:
            if not all(c in "0123456789abcdef" for c in flt.page_token):
                raise InvalidArgument("page_token is not one this server issued",
                                      field="page_token")
            upper = "(" + flt.page_token if upper == "+" else min(upper, "(" + flt.page_token)
        lower = "-" if flt.start is None else "[" + _id_bound(flt.start)
        min_rank = severity_rank(flt.min_severity) if flt.min_severity else -1
        page: list[TraceRecord] = []
        scanned = 0
        last = ""
        while len(page) < flt.page_size and scanned < SCAN_LIMIT:
            ids = [text(i) for i in await self._r.zrevrangebylex(
                index, upper, lower, start=0, num=_BATCH)]
            if not ids:
                return page, ""
            scanned += len(ids)
            async with self._r.pipeline(transaction=False) as pipe:
                for trace_id in ids:
                    pipe.hmget(self._keys.trace(trace_id), ["summary", "status"])
                rows = await pipe.execute()
            for trace_id, (summary, status) in zip(ids, rows, strict=True):
                last = trace_id
                if summary is None:
                    continue  # expired, index not trimmed yet
                record = TraceRecord.model_validate_json(summary)
                record = record.model_copy(update={"status": status.decode()})
                if self._matches(record, flt, min_rank):
                    page.append(record)
                    if len(page) == flt.page_size:
                        break
            upper = "(" + last
        return page, last

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
