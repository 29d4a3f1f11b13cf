"""The live alert stream: a Redis Stream that any number of readers follow.

Readers without a group each see every alert (XREAD). Readers in a consumer group share the
alerts (XREADGROUP), at least once: an alert stays pending until its reader acknowledges it
(`ack`, after it has the alert, not when it is handed to gRPC). A reader that reconnects gets
its own pending alerts again first; alerts pending longer than `claim_idle_ms` (their reader
died, or never acknowledged) are claimed by whichever reader of the group reads next; readers
idle for `DEAD_AFTER_MS` with nothing pending are removed from the group. A reader that
filters (severity, rules) reads in a group of its own filters (`group_for`), so what it leaves
out is never acknowledged for readers that want it.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import cast

from redis.exceptions import ResponseError

from latentguard.server.errors import InvalidArgument, quoted
from latentguard.server.records import AlertRecord
from latentguard.server.store.client import Client
from latentguard.server.store.keys import Keys, text

# Stream replies as this client returns them (bytes: no decode_responses); redis-py's own
# annotations cannot say so.
Entries = list[tuple[bytes, dict[bytes, bytes]]]
StreamRows = list[tuple[bytes, Entries]]

log = logging.getLogger(__name__)

CLAIM_IDLE_MS = 30_000
"""An alert delivered and not acknowledged for this long goes to the next reader."""
DEAD_AFTER_MS = 3_600_000
"""A reader idle this long, with nothing pending, is removed from its group."""
BLOCK_MS = 1000


def group_for(group: str, min_severity: str = "", rules: Sequence[str] = ()) -> str:
    """The Redis consumer group of readers of `group` with these filters: readers share alerts
    only with readers that want the same ones."""
    if not rules and min_severity in ("", "info"):
        return group
    key = f"{min_severity}|{','.join(sorted(set(rules)))}"
    return f"{group}~{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def _valid_id(stream_id: str) -> bool:
    """Two decimal parts that each fit Redis's 64-bit halves (a longer one is refused by
    Redis with an error, which is the caller's mistake, not the server's)."""
    head, _, tail = stream_id.partition("-")
    return (head.isascii() and head.isdigit() and int(head) < 2**64
            and (tail == "" or (tail.isascii() and tail.isdigit() and int(tail) < 2**64)))


class AlertStream:
    def __init__(self, client: Client, keys: Keys, maxlen: int,
                 retention: timedelta | None = None) -> None:
        self._r = client
        self._key = keys.alerts
        self.maxlen = maxlen
        self.retention = retention
        """Alerts older than this are trimmed, as their traces expire."""
        self._published = 0

    async def publish(self, alert: AlertRecord) -> str:
        payload = alert.model_copy(update={"id": ""}).model_dump_json()
        stream_id = await self._r.xadd(
            self._key, {"alert": payload}, maxlen=self.maxlen, approximate=True
        )
        self._published += 1
        if self.retention is not None and self._published % 100 == 1:
            oldest_ms = int((datetime.now(UTC) - self.retention).timestamp() * 1000)
            await self._r.xtrim(self._key, minid=f"{oldest_ms}-0", approximate=True)
        return text(stream_id)

    @staticmethod
    def _decode(stream_id: bytes, fields: dict[bytes, bytes]) -> AlertRecord:
        record = AlertRecord.model_validate_json(fields[b"alert"])
        return record.model_copy(update={"id": stream_id.decode()})

    async def follow(self, after_id: str = "") -> AsyncIterator[AlertRecord]:
        """Every alert after `after_id` ("" = only new ones, "0" = all kept), forever."""
        if after_id and not _valid_id(after_id):
            raise InvalidArgument(f"after_id {quoted(after_id)} is not a stream id like 1700000-0",
                                  field="after_id")
        last = after_id or "$"
        if last == "$":
            # Resolve "$" once, so alerts published between two reads are not skipped.
            info = cast(Entries, await self._r.xrevrange(self._key, count=1))
            last = info[0][0].decode() if info else "0"
        while True:
            rows = cast(StreamRows, await self._r.xread({self._key: last}, block=BLOCK_MS,
                                                        count=100))
            for _, entries in rows:
                for stream_id, fields in entries:
                    last = stream_id.decode()
                    yield self._decode(stream_id, fields)

    async def consume(self, group: str, consumer: str = "",
                      accept: Callable[[AlertRecord], bool] = lambda _: True,
                      claim_idle_ms: int = CLAIM_IDLE_MS) -> AsyncIterator[AlertRecord]:
        """Alerts shared among the readers of `group`, each delivered until acknowledged
        (`ack`); alerts `accept` refuses are acknowledged at once (`group` is this filter's)."""
        consumer = consumer or f"consumer-{os.urandom(4).hex()}"
        try:
            await self._r.xgroup_create(self._key, group, id="$", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        # First what this reader was given before and never acknowledged (it reconnected).
        last = "0"
        while True:
            rows = cast(StreamRows, await self._r.xreadgroup(
                group, consumer, {self._key: last}, count=100) or [])
            entries = rows[0][1] if rows else []
            if not entries:
                break
            for stream_id, fields in entries:
                last = text(stream_id)
                async for alert in self._deliver(group, stream_id, fields, accept):
                    yield alert
        rounds = 0
        while True:
            _, claimed, *_ = await self._r.xautoclaim(
                self._key, group, consumer, min_idle_time=claim_idle_ms, start_id="0-0",
                count=100)
            rows = [(self._key.encode(), claimed)] if claimed else []
            rows += cast(StreamRows, await self._r.xreadgroup(
                group, consumer, {self._key: ">"}, count=100, block=BLOCK_MS) or [])
            for _, entries in rows:
                for stream_id, fields in entries:
                    async for alert in self._deliver(group, stream_id, fields, accept):
                        yield alert
            rounds += 1
            if rounds % 60 == 0:
                await self._remove_dead(group)

    async def _deliver(self, group: str, stream_id: bytes, fields: dict[bytes, bytes],
                       accept: Callable[[AlertRecord], bool]) -> AsyncIterator[AlertRecord]:
        if not fields:  # claimed, but trimmed from the stream meanwhile
            await self._r.xack(self._key, group, stream_id)
            return
        alert = self._decode(stream_id, fields)
        if accept(alert):
            yield alert
        else:
            await self._r.xack(self._key, group, stream_id)

    async def ack(self, group: str, ids: Sequence[str]) -> int:
        """Acknowledges alerts a reader of `group` has; returns how many were pending."""
        for i, stream_id in enumerate(ids):
            if not _valid_id(stream_id):
                raise InvalidArgument(f"ids[{i}]: not a stream id like 1700000-0",
                                      field=f"ids[{i}]")
        if not ids:
            return 0
        try:
            return int(await self._r.xack(self._key, group, *ids))
        except ResponseError as exc:  # an id past the stream's range
            raise InvalidArgument(f"ids: {exc}", field="ids") from None

    async def _remove_dead(self, group: str) -> None:
        for info in await self._r.xinfo_consumers(self._key, group):
            if int(info["pending"]) == 0 and int(info["idle"]) > DEAD_AFTER_MS:
                await self._r.xgroup_delconsumer(self._key, group, info["name"])

    async def length(self) -> int:
        return int(await self._r.xlen(self._key))
