"""The live alert stream: a Redis Stream that any number of readers follow.

Readers without a group each see every alert (XREAD); readers in a consumer group share the
alerts (XREADGROUP), each alert acknowledged once delivered, and alerts left pending by a reader
that died are claimed by the others after `CLAIM_IDLE_MS`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from typing import cast

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from latentguard.server.errors import InvalidArgument
from latentguard.server.records import AlertRecord
from latentguard.server.store.keys import Keys, text

# Stream replies as this client returns them (bytes: no decode_responses); redis-py's own
# annotations cannot say so.
Entries = list[tuple[bytes, dict[bytes, bytes]]]
StreamRows = list[tuple[bytes, Entries]]

log = logging.getLogger(__name__)

CLAIM_IDLE_MS = 30_000
BLOCK_MS = 1000


def _valid_id(stream_id: str) -> bool:
    head, _, tail = stream_id.partition("-")
    return head.isdigit() and (tail == "" or tail.isdigit())


class AlertStream:
    def __init__(self, client: aioredis.Redis, keys: Keys, maxlen: int) -> None:
        self._r = client
        self._key = keys.alerts
        self.maxlen = maxlen

    async def publish(self, alert: AlertRecord) -> str:
        payload = alert.model_copy(update={"id": ""}).model_dump_json()
        stream_id = await self._r.xadd(
            self._key, {"alert": payload}, maxlen=self.maxlen, approximate=True
        )
        return text(stream_id)

    @staticmethod
    def _decode(stream_id: bytes, fields: dict[bytes, bytes]) -> AlertRecord:
        record = AlertRecord.model_validate_json(fields[b"alert"])
        return record.model_copy(update={"id": stream_id.decode()})

    async def follow(self, after_id: str = "") -> AsyncIterator[AlertRecord]:
        """Every alert after `after_id` ("" = only new ones, "0" = all kept), forever."""
        if after_id and not _valid_id(after_id):
            raise InvalidArgument(f"after_id {after_id!r} is not a stream id like 1700000-0",
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

    async def consume(self, group: str, consumer: str = "") -> AsyncIterator[AlertRecord]:
        """Alerts shared among the readers of `group`; each is acknowledged once yielded."""
        consumer = consumer or f"consumer-{os.urandom(4).hex()}"
        try:
            await self._r.xgroup_create(self._key, group, id="$", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        while True:
            _, claimed, *_ = await self._r.xautoclaim(
                self._key, group, consumer, min_idle_time=CLAIM_IDLE_MS, start_id="0-0", count=100
            )
            rows: StreamRows = [(self._key.encode(), claimed)] if claimed else []
            rows += cast(StreamRows, await self._r.xreadgroup(
                group, consumer, {self._key: ">"}, count=100, block=BLOCK_MS) or [])
            for _, entries in rows:
                for stream_id, fields in entries:
                    if fields:  # a claimed entry trimmed from the stream has no fields
                        yield self._decode(stream_id, fields)
                    await self._r.xack(self._key, group, stream_id)

    async def length(self) -> int:
        return int(await self._r.xlen(self._key))
