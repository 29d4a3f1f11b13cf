"""Background writes of traces and alerts, so verdicts never wait on the store.

A trace accepted is a trace stored: writes are retried with backoff on connection errors, and
what still cannot be written goes to a spool file in the data directory, replayed at the next
start. A store error that is not a lost connection (Redis refusing writes when out of memory, say)
is not retried: the trace is spooled at once, so the writer keeps going. Alerts are never spooled:
one that cannot be published is dropped with an error logged (its trace keeps the hit).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from pathlib import Path

from pydantic import ValidationError
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
        # Spool lines that are not a trace (a torn write, a hand edit): kept, never replayed.
        self.bad_spool = spool_dir / "spool-traces.bad.jsonl"
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
            except Exception:
                # Retrying at once would not help, and raising would end the writer loop (every
                # later trace would wait in the queue for ever).
                if isinstance(item, TraceRecord):
                    log.exception("store refused trace %s; spooled to %s", item.id, self.spool)
                    self._spool(item)
                else:
                    log.exception("store refused alert for trace %s; dropped (its trace keeps "
                                  "the hit)", item.trace_id)
                return

    def _spool(self, trace: TraceRecord) -> None:
        self.spool.parent.mkdir(parents=True, exist_ok=True)
        with open(_private(self.spool), "a", encoding="utf-8") as f:
            f.write(trace.model_dump_json() + "\n")

    async def replay_spool(self) -> int:
        """Writes the spooled traces again (spooling anew those that still fail); returns how
        many were replayed. A line that is not a trace is appended to `bad_spool` with an error
        logged, and the other lines are replayed all the same."""
        if not self.spool.exists():
            return 0
        pending = self.spool.with_suffix(".replaying")
        self.spool.rename(pending)
        count = 0
        for number, line in enumerate(pending.read_bytes().splitlines(), 1):
            if not line.strip():
                continue
            try:
                trace = TraceRecord.model_validate_json(line)
            except ValidationError as exc:
                log.error("spool line %d is not a trace (%d errors: %s); moved to %s", number,
                          exc.error_count(), exc.errors()[0]["msg"], self.bad_spool)
                with open(_private(self.bad_spool), "ab") as f:
                    f.write(line + b"\n")
                continue
            await self._write(trace)
            count += 1
        pending.unlink()
        log.info("replayed %d spooled traces", count)
        return count


def _private(path: Path) -> int:
    """A descriptor to append to `path`, created 0600 whatever the umask (traces are private)."""
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
