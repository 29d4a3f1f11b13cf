"""Background writes of traces and alerts, so verdicts never wait on the store.

A trace accepted is a trace stored: writes are retried with backoff on connection errors, and
what still cannot be written goes to a spool file in the data directory, replayed at the next
start (and on every later successful write).
"""

from __future__ import annotations

import asyncio
import logging
import random
from pathlib import Path

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from latentguard.server.records import AlertRecord, TraceRecord
from latentguard.server.store import Store

log = logging.getLogger(__name__)

RETRYABLE = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError)


class TraceWriter:
    def __init__(self, store: Store, spool_dir: Path, *, deadline_s: float = 30.0) -> None:
        self.store = store
        self.spool = spool_dir / "spool-traces.jsonl"
        self.deadline_s = deadline_s
        self._queue: asyncio.Queue[TraceRecord | AlertRecord | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> TraceWriter:
        self._task = asyncio.create_task(self._run())
        return self

    def save(self, trace: TraceRecord) -> None:
        self._queue.put_nowait(trace)

    def publish(self, alert: AlertRecord) -> None:
        self._queue.put_nowait(alert)

    async def flush(self) -> None:
        """Returns once everything queued so far is written (or spooled)."""
        await self._queue.join()

    async def close(self) -> None:
        if self._task is None:
            return
        self._queue.put_nowait(None)
        await self._task
        self._task = None

    async def _run(self) -> None:
        await self.replay_spool()
        while True:
            item = await self._queue.get()
            try:
                if item is None:
                    return
                await self._write(item)
            finally:
                self._queue.task_done()

    async def _write(self, item: TraceRecord | AlertRecord) -> None:
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.deadline_s
        delay = 0.1
        while True:
            try:
                if isinstance(item, TraceRecord):
                    await self.store.traces.save(item)
                else:
                    await self.store.alerts.publish(item)
                return
            except RETRYABLE as exc:
                if loop.time() + delay > give_up:
                    if isinstance(item, TraceRecord):
                        log.error("store unreachable (%s); trace %s spooled to %s", exc,
                                  item.id, self.spool)
                        self._spool(item)
                    else:
                        log.error("store unreachable (%s); alert for trace %s dropped (its "
                                  "trace keeps the hit)", exc, item.trace_id)
                    return
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 5.0)

    def _spool(self, trace: TraceRecord) -> None:
        self.spool.parent.mkdir(parents=True, exist_ok=True)
        with self.spool.open("a") as f:
            f.write(trace.model_dump_json() + "\n")

    async def replay_spool(self) -> int:
        if not self.spool.exists():
            return 0
        pending = self.spool.with_suffix(".replaying")
        self.spool.rename(pending)
        count = 0
        for line in pending.read_text().splitlines():
            if line.strip():
                await self._write(TraceRecord.model_validate_json(line))
                count += 1
        pending.unlink()
        log.info("replayed %d spooled traces", count)
        return count
