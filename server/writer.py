"""Background writes of traces and alerts, so verdicts never wait on the store, and nothing
accepted is lost: the write-ahead spool (`server/spool.py`) holds every record first.

* `save` / `publish` put a record in the current batch; every `FLUSH_S` (or sooner, when
  `flush` or `close` asks) the batch becomes one fsynced spool segment. A trace accepted is on
  disk within `FLUSH_S` plus one fsync: that is what a SIGKILL can cost.
* The drainer writes each segment to the store, oldest first, and removes it once all of it is
  in. While the store is away (or refuses writes) segments wait on disk, not in memory, and
  the drainer retries with backoff for as long as it takes: replay is continuous, not only at
  start. Memory holds one batch and one segment.
* Requests opened and not yet finished are journaled; at the next start those a crash left
  open are stored as traces with a monitoring gap.
* `close` turns the batch into a segment, then drains for at most `drain_s`; what is left stays
  on disk for the next start.

Records reach the store at least once: a crash between storing a segment's records and
removing it stores them again at the next start (traces are idempotent by id; an alert may be
published twice).
"""

from __future__ import annotations

import asyncio
import logging
import random
from pathlib import Path

from redis.exceptions import ResponseError

from latentguard.server.errors import STORE_UNAVAILABLE
from latentguard.server.records import AlertRecord, TraceRecord, utcnow
from latentguard.server.spool import Spool, SpoolFull, SpoolRecord
from latentguard.server.store import Store

log = logging.getLogger(__name__)

FLUSH_S = 0.2
"""Longest a record waits in memory before it is fsynced to the spool."""
#: The store is away (a cluster node too), or refuses writes for now (out of memory, read-only
#: replica, a slot moving): retry.
RETRYABLE: tuple[type[Exception], ...] = (*STORE_UNAVAILABLE, ConnectionError, OSError,
                                          ResponseError)
SAVE_BATCH = 64
"""Traces of a segment written to the store in one pipeline."""
BAD_SEGMENT_TRIES = 3
"""Tries of a segment failing with anything else before it is set aside."""


class TraceWriter:
    def __init__(self, store: Store, data_dir: Path, *, spool_max_bytes: int = 1 << 30,
                 drain_s: float = 10.0) -> None:
        self.store = store
        self.spool = Spool(data_dir, max_bytes=spool_max_bytes)
        self.drain_s = drain_s
        self._batch: list[SpoolRecord] = []
        self._opened: list[TraceRecord] = []
        self._closed: list[str] = []
        self._wake = asyncio.Event()
        self._written = asyncio.Condition()
        self.store_down = False
        """True while the last write to the store failed (records wait on disk)."""
        self._failures = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._segment_ready = asyncio.Event()
        self._unstored: dict[str, asyncio.Event] = {}
        """Traces saved and not yet in the store, each with an event set once it is."""
        self._lock = asyncio.Lock()  # one batch -> segment at a time
        self._bad_tries: dict[str, int] = {}
        """Segments that failed with an error other than the store being away: tries so far."""

    def start(self) -> TraceWriter:
        self.spool.prepare()
        for trace in self.spool.interrupted(self.spool.trace_ids()):
            log.warning("request %s was in flight when the sidecar stopped: stored with a "
                        "monitoring gap", trace.request_tag)
            self.save(trace.model_copy(update={
                "monitoring_gap": True, "finish_reason": trace.finish_reason or "incomplete",
                "ended_at": trace.ended_at or utcnow()}))
        self._segment_ready.set()  # segments of an earlier run
        self._tasks = [asyncio.create_task(self._flusher(), name="latentguard-spool"),
                       asyncio.create_task(self._drainer(), name="latentguard-store")]
        return self

    # ---- what the step calls --------------------------------------------------------------

    def opened(self, trace: TraceRecord) -> None:
        """A request began: if the sidecar dies before it ends, it is stored as a gap."""
        self._opened.append(trace.model_copy(update={"tokens": [], "hits": []}))
        self._wake.set()

    def save(self, trace: TraceRecord) -> None:
        self._batch.append(SpoolRecord(kind="trace", record=trace))
        self._unstored.setdefault(trace.id, asyncio.Event())
        self._closed.append(trace.id)
        self._wake.set()

    def discard(self, trace: TraceRecord) -> None:
        """A request ended whose trace is not kept (the trace_store setting)."""
        self._closed.append(trace.id)
        self._wake.set()

    def publish(self, alert: AlertRecord) -> None:
        self._batch.append(SpoolRecord(kind="alert", record=alert))
        self._wake.set()

    async def stored(self, trace_id: str, timeout: float) -> bool:
        """Waits until a trace saved here is in the store (so a caller handed its id can read
        it); False after `timeout` (the store is away: the trace waits on disk)."""
        event = self._unstored.get(trace_id)
        if event is None:
            return True
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            return False
        return True

    # ---- flushing ---------------------------------------------------------------------------

    async def flush(self) -> None:
        """Returns once everything saved so far is in the store, or, while the store is away,
        safe on disk."""
        await self._to_disk()
        failures = self._failures
        async with self._written:
            await self._written.wait_for(
                lambda: self._failures > failures or not self.spool.segments())

    async def close(self) -> None:
        """Everything to disk; then at most `drain_s` to store it (the rest waits on disk)."""
        if not self._tasks:
            return
        await self._to_disk()
        try:
            async with asyncio.timeout(self.drain_s):
                async with self._written:
                    await self._written.wait_for(lambda: not self.spool.segments())
        except TimeoutError:
            log.warning("stopping with %d spool segments not yet stored (%s): they are stored "
                        "at the next start", len(self.spool.segments()), self.spool.dir)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _to_disk(self) -> None:
        async with self._lock:
            batch, self._batch = self._batch, []
            opened, self._opened = self._opened, []
            closed, self._closed = self._closed, []
            if batch:
                try:
                    await asyncio.to_thread(self.spool.write, batch)
                except SpoolFull as exc:
                    log.error("%s: %d records dropped", exc, len(batch))
                    for r in batch:
                        self._unstored.pop(r.record.id, None)
            if opened or closed:
                await asyncio.to_thread(self.spool.journal, opened, closed)
            if batch:
                self._segment_ready.set()

    async def _flusher(self) -> None:
        loop = asyncio.get_running_loop()
        last = 0.0
        while True:
            await self._wake.wait()
            # Under load, gather what arrives within FLUSH_S into one fsync; a lone record
            # is written at once.
            await asyncio.sleep(max(0.0, last + FLUSH_S - loop.time()))
            last = loop.time()
            self._wake.clear()
            try:
                await self._to_disk()
            except OSError:
                log.exception("cannot write the spool in %s; retrying", self.spool.dir)
                self._wake.set()

    # ---- draining into the store ------------------------------------------------------------

    async def _drainer(self) -> None:
        delay = 0.1
        while True:
            await self._segment_ready.wait()
            self._segment_ready.clear()
            async with self._lock:  # only segments whose journal entries are written
                paths = await asyncio.to_thread(self.spool.segments)
            for path in paths:
                while not await self._store_segment(path):
                    await asyncio.sleep(delay * (0.5 + random.random()))
                    delay = min(delay * 2, 5.0)
                delay = 0.1

    async def _store_segment(self, path: Path) -> bool:
        """Writes one segment to the store and removes it; False when the store failed."""
        records = await asyncio.to_thread(self.spool.read, path)
        try:
            # Traces in pipelines of SAVE_BATCH (on a cluster, each goes to every node at
            # once), then the alerts, whose traces are then readable.
            traces = [r.record for r in records if isinstance(r.record, TraceRecord)]
            for start in range(0, len(traces), SAVE_BATCH):
                await self.store.traces.save_many(traces[start:start + SAVE_BATCH])
            for r in records:
                if isinstance(r.record, AlertRecord):
                    await self.store.alerts.publish(r.record)
        except RETRYABLE as exc:
            if not self.store_down:
                log.error("store unreachable or refusing writes (%s): records wait in %s",
                          exc, self.spool.dir)
            await self._set_down(True)
            return False
        except Exception:
            # Not the store being away. Tried again a few times (a client can fail once on
            # its own, e.g. a cluster client re-reading the slot map under load); then kept
            # aside for a person to look at, as retrying for ever would hold up every later
            # segment.
            tries = self._bad_tries[path.name] = self._bad_tries.get(path.name, 0) + 1
            if tries < BAD_SEGMENT_TRIES:
                log.exception("cannot store spool segment %s (try %d of %d)", path.name,
                              tries, BAD_SEGMENT_TRIES)
                return False
            self._bad_tries.pop(path.name, None)
            log.exception("cannot store spool segment %s; kept as %s", path.name,
                          self.spool.set_aside(path))
        await asyncio.to_thread(self.spool.remove, path)
        for r in records:
            if isinstance(r.record, TraceRecord) and (e := self._unstored.pop(r.record.id, None)):
                e.set()
        if self.store_down:
            log.info("store reachable again: writing the spooled records")
        await self._set_down(False)
        return True

    async def _set_down(self, down: bool) -> None:
        async with self._written:
            self.store_down = down
            self._failures += down
            self._written.notify_all()
