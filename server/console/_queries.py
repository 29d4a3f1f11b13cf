"""What the console reads from the store, through its public API only (`store.traces.list`,
`.get`, `store.rules.list`): no key layout is assumed here.

Two reads are bounded, and the pages say so: the stats read at most `stats_max_traces` stored
traces of their period (newest first), and a feature's top tokens come from the
`feature_scan_traces` most recent stored traces.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from latentguard.monitors.rules import Rule
from latentguard.server.errors import NotFound
from latentguard.server.records import TraceFilter, TraceRecord
from latentguard.server.rule_stats import TraceOutcome, outcome_of
from latentguard.server.store import Store

__all__ = ["FeatureToken", "feature_tokens", "outcomes", "stored_rules"]

PAGE = 1000
"""Traces per store listing call (its most)."""
CONCURRENT_GETS = 16
CONTEXT = 6
"""Tokens shown on each side of a feature's top token."""


async def stored_rules(store: Store) -> dict[str, tuple[Rule, int]]:
    """Every stored rule (applied or not) with its version, by name."""
    return {v.name: (Rule.model_validate(v.spec), v.version) for v in await store.rules.list()}


async def _listing(store: Store, start: datetime | None, end: datetime | None,
                   limit: int) -> tuple[list[TraceRecord], bool]:
    """Up to `limit` stored summaries of start..end, newest first, and whether more remain."""
    out: list[TraceRecord] = []
    token = ""
    while len(out) < limit:
        page, token = await store.traces.list(TraceFilter(
            start=start, end=end, page_size=min(PAGE, limit - len(out)), page_token=token))
        out += page
        if not token:
            return out, False
    return out, True


async def _gets(store: Store, ids: Sequence[str]) -> dict[str, TraceRecord]:
    """The full records of `ids` (reviews included), a few at a time; expired ones left out."""
    gate = asyncio.Semaphore(CONCURRENT_GETS)

    async def one(trace_id: str) -> TraceRecord | None:
        async with gate:
            try:
                return await store.traces.get(trace_id)
            except NotFound:
                return None

    found = await asyncio.gather(*(one(i) for i in ids))
    return {r.id: r for r in found if r is not None}


async def outcomes(store: Store, start: datetime, end: datetime,
                   limit: int) -> tuple[list[TraceOutcome], bool]:
    """One outcome per stored trace of start..end (at most `limit`, newest first) and
    whether the bound cut the period. Listings carry no reviews, so reviewed traces are read
    whole for theirs."""
    summaries, truncated = await _listing(store, start, end, limit)
    reviewed = await _gets(store, [t.id for t in summaries if t.status == "reviewed"])
    return [outcome_of(t, reviewed[t.id].reviews if t.id in reviewed else [])
            for t in summaries], truncated


@dataclass(frozen=True)
class FeatureToken:
    """One stored token where a feature was among the top-k, with its neighbours."""

    value: float
    trace_id: str
    position: int
    text: str
    before: str
    after: str
    prompt: bool
    started_at: datetime


async def feature_tokens(store: Store, feature: int, scan: int,
                         top: int = 25) -> tuple[list[FeatureToken], int]:
    """The `top` stored tokens where `feature` fired most, among the `scan` most recent
    stored traces (a token records its top-k features only, so below its top-k a feature
    reads as not firing), and how many traces were read."""
    summaries, _ = await _listing(store, None, None, scan)
    best: list[tuple[float, int, FeatureToken]] = []
    n = 0
    for i in range(0, len(summaries), CONCURRENT_GETS * 4):
        records = await _gets(store, [t.id for t in summaries[i:i + CONCURRENT_GETS * 4]])
        for record in records.values():
            texts = [t.text for t in record.tokens]
            for j, tok in enumerate(record.tokens):
                value = next((f.value for f in tok.top_features if f.feature == feature), None)
                if value is None or value <= 0:
                    continue
                n += 1
                item = FeatureToken(
                    value=value, trace_id=record.id, position=tok.position, text=tok.text,
                    before="".join(texts[max(0, j - CONTEXT):j]),
                    after="".join(texts[j + 1:j + 1 + CONTEXT]), prompt=tok.prompt,
                    started_at=record.started_at)
                entry = (value, -n, item)
                if len(best) < top:
                    heapq.heappush(best, entry)
                else:
                    heapq.heappushpop(best, entry)
    return [item for _, _, item in sorted(best, reverse=True)], len(summaries)
