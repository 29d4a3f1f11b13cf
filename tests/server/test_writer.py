"""The trace writer against a real redis-server that the tests stop and restart.

Each test starts its own redis-server on a free loopback port, so it can take Redis away from
the writer (stop the process) and bring it back on the same port, as an outage of a shared Redis
would. What is checked is behaviour: every record saved ends up in the store, or on disk in the
spool until the store is back; nothing is dropped.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from latentguard.monitors.rules import RuleHit
from latentguard.server.errors import NotFound
from latentguard.server.records import AlertRecord, TraceRecord
from latentguard.server.store import Store
from latentguard.server.store.embedded import RedisServer, free_port
from latentguard.server.writer import FLUSH_S, TraceWriter

# Generous bound for anything that should finish at once (slow shared CI machines).
WAIT_S = 20.0


def hit(rule: str = "r1") -> RuleHit:
    return RuleHit(rule=rule, severity="high", action="block", position=2, score=2.5,
                   explanation=f"{rule} fired")


def trace(tag: str = "req") -> TraceRecord:
    return TraceRecord(request_tag=tag, model="m", hits=[hit()])


def alert(of: TraceRecord) -> AlertRecord:
    return AlertRecord(trace_id=of.id, request_tag=of.request_tag, model=of.model, hit=hit())


def spooled(writer: TraceWriter) -> list[dict]:
    """The records the writer's spool holds, oldest first."""
    return [json.loads(line) for path in writer.spool.segments()
            for line in path.read_text().splitlines() if line.strip()]


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + WAIT_S
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.05)


async def stored(store: Store, trace_id: str) -> bool:
    try:
        await store.traces.get(trace_id)
    except NotFound:
        return False
    return True


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own on a free port; stop() and start() it at will."""
    server = RedisServer(tmp_path / "redis", port=free_port(), persistent=False)
    with server:
        yield server


@pytest.fixture
async def store(redis_server: RedisServer, tmp_path: Path) -> AsyncIterator[Store]:
    opened = await Store.open(redis_server.url, tmp_path, retention=timedelta(days=1))
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
async def writers() -> AsyncIterator[list[TraceWriter]]:
    """Writers a test started; closed at the end even when the test fails."""
    started: list[TraceWriter] = []
    yield started
    for writer in started:
        await asyncio.wait_for(writer.close(), WAIT_S)


def start(writers: list[TraceWriter], store: Store, data_dir: Path, **kw: Any) -> TraceWriter:
    kw.setdefault("drain_s", 1.0)  # a test that leaves Redis down does not wait 10 s at close
    writer = TraceWriter(store, data_dir, **kw).start()
    writers.append(writer)
    return writer


async def test_trace_and_alert_are_in_the_store_after_flush(
    store: Store, data_dir: Path, writers: list[TraceWriter]
) -> None:
    writer = start(writers, store, data_dir)
    t = trace()
    writer.save(t)
    writer.publish(alert(t))
    await asyncio.wait_for(writer.flush(), WAIT_S)
    assert (await store.traces.get(t.id)).request_tag == "req"
    assert await store.alerts.length() == 1
    assert spooled(writer) == []  # stored segments are removed


async def test_saved_records_are_on_disk_within_the_flush_period(
    redis_server: RedisServer, store: Store, data_dir: Path, writers: list[TraceWriter]
) -> None:
    """With the store away, a saved trace and its alert reach a fsynced spool segment within
    FLUSH_S (what a SIGKILL can lose), without anyone calling flush()."""
    writer = start(writers, store, data_dir)
    redis_server.stop()
    t = trace()
    writer.save(t)
    writer.publish(alert(t))
    await asyncio.sleep(FLUSH_S + 0.3)
    assert [r["kind"] for r in spooled(writer)] == ["trace", "alert"]
    assert TraceRecord.model_validate(spooled(writer)[0]["record"]) == t


async def test_an_outage_loses_nothing_and_replay_is_continuous(
    redis_server: RedisServer, store: Store, data_dir: Path, writers: list[TraceWriter]
) -> None:
    """Redis away: flush() returns once the records are safe on disk; when Redis comes back the
    same writer (no restart) stores every trace and every alert, in order, and empties the
    spool."""
    writer = start(writers, store, data_dir)
    redis_server.stop()
    saved = [trace(f"t{i}") for i in range(30)]
    for t in saved:
        writer.save(t)
        writer.publish(alert(t))
    await asyncio.wait_for(writer.flush(), WAIT_S)
    assert len(spooled(writer)) == 60
    assert writer.store_down

    await asyncio.to_thread(redis_server.start)

    async def all_stored() -> bool:
        return not writer.spool.segments()

    await eventually(all_stored, "the spool was not replayed after Redis came back")
    for t in saved:
        assert await stored(store, t.id)
    assert await store.alerts.length() == 30
    assert not writer.store_down


async def test_the_next_start_stores_what_a_stop_left_on_disk(
    redis_server: RedisServer, store: Store, data_dir: Path, writers: list[TraceWriter]
) -> None:
    """close() is bounded (drain_s) while Redis is away; what it leaves on disk is stored by the
    next writer, and a record it is given meanwhile is stored too."""
    first = TraceWriter(store, data_dir, drain_s=0.5).start()
    redis_server.stop()
    left = [trace("a"), trace("b")]
    for t in left:
        first.save(t)
    loop = asyncio.get_running_loop()
    began = loop.time()
    await asyncio.wait_for(first.close(), WAIT_S)
    assert loop.time() - began < 3.0, "close() waited on the store past drain_s"
    assert len(spooled(first)) == 2

    await asyncio.to_thread(redis_server.start)
    second = start(writers, store, data_dir)
    later = trace("c")
    second.save(later)
    await asyncio.wait_for(second.flush(), WAIT_S)
    for t in [*left, later]:
        assert await stored(store, t.id)
    assert spooled(second) == []


async def test_close_writes_what_was_queued_before_it(store: Store, data_dir: Path) -> None:
    """close() returns only after every trace and alert saved before it is written."""
    writer = TraceWriter(store, data_dir).start()
    queued = [trace(f"t{i}") for i in range(20)]
    for t in queued:
        writer.save(t)
        writer.publish(alert(t))
    await asyncio.wait_for(writer.close(), WAIT_S)

    for t in queued:
        assert await stored(store, t.id)
    assert await store.alerts.length() == len(queued)


async def test_requests_open_at_a_stop_are_stored_as_gaps(
    store: Store, data_dir: Path, writers: list[TraceWriter]
) -> None:
    """A request opened and never finished (the sidecar died mid-request) is stored by the
    next start as a trace with a monitoring gap; one that finished is not touched."""
    first = TraceWriter(store, data_dir).start()
    open_, done = trace("in-flight"), trace("finished")
    first.opened(open_)
    first.opened(done)
    first.save(done)
    await asyncio.wait_for(first.flush(), WAIT_S)
    for task in first._tasks:  # a crash: no close
        task.cancel()

    second = start(writers, store, data_dir)
    await asyncio.wait_for(second.flush(), WAIT_S)
    gap = await store.traces.get(open_.id)
    assert gap.monitoring_gap and gap.finish_reason == "incomplete"
    kept = await store.traces.get(done.id)
    assert not kept.monitoring_gap and len(kept.hits) == 1


async def test_an_earlier_versions_spool_is_replayed_and_bad_lines_set_aside(
    store: Store, data_dir: Path, writers: list[TraceWriter], caplog: pytest.LogCaptureFixture
) -> None:
    """The one-file spool of earlier versions is replayed at start; a line that is not a trace
    (torn write, bad bytes, wrong shape) is kept in the .bad file with an error logged, and the
    other lines are stored all the same."""
    good = [trace("a"), trace("b")]
    bad_lines = [b'{"id": "0123", "request_', b"\xff\xfe not utf-8", b'{"id": 5}']
    data_dir.mkdir(parents=True)
    legacy = data_dir / "spool-traces.jsonl"
    legacy.write_bytes(b"\n".join([
        good[0].model_dump_json().encode(), *bad_lines, b"", good[1].model_dump_json().encode(),
    ]) + b"\n")

    with caplog.at_level(logging.ERROR, logger="latentguard.server.spool"):
        writer = start(writers, store, data_dir)
        later = trace("c")
        writer.save(later)
        await asyncio.wait_for(writer.flush(), WAIT_S)

    for t in [*good, later]:
        assert await stored(store, t.id)
    assert not legacy.exists()
    assert (data_dir / "spool-traces.bad.jsonl").read_bytes().splitlines() == bad_lines
    assert sum("not a trace" in r.getMessage() for r in caplog.records) == len(bad_lines)


async def test_a_store_refusing_writes_keeps_records_until_it_recovers(
    store: Store, data_dir: Path, writers: list[TraceWriter]
) -> None:
    """Redis out of memory refuses writes: the records wait on disk, and are stored once it
    accepts writes again (nothing dropped, the writer goes on)."""
    writer = start(writers, store, data_dir)
    await store.client.config_set("maxmemory", "1")  # noeviction: every write is refused
    try:
        refused = trace("refused")
        writer.save(refused)
        writer.publish(alert(refused))
        await asyncio.wait_for(writer.flush(), WAIT_S)
        assert [r["kind"] for r in spooled(writer)] == ["trace", "alert"]
    finally:
        await store.client.config_set("maxmemory", "0")
    after = trace("after")
    writer.save(after)
    await asyncio.wait_for(writer.flush(), WAIT_S)

    async def both() -> bool:
        return await stored(store, refused.id) and await stored(store, after.id)

    await eventually(both, "the refused records were not stored after Redis recovered")
    assert await store.alerts.length() == 1


async def test_a_full_spool_says_so(redis_server: RedisServer, store: Store, data_dir: Path,
                                    writers: list[TraceWriter],
                                    caplog: pytest.LogCaptureFixture) -> None:
    """Past its disk budget the spool refuses a batch with an error naming the setting."""
    writer = start(writers, store, data_dir, spool_max_bytes=2000)
    redis_server.stop()
    with caplog.at_level(logging.ERROR, logger="latentguard.server.writer"):
        for i in range(12):
            writer.save(trace(f"t{i}"))
            await asyncio.sleep(FLUSH_S + 0.1)  # one segment each
    assert writer.spool.size() <= 2000
    assert any("LATENTGUARD_SPOOL_MAX_MB" in r.getMessage() for r in caplog.records)


def test_the_in_flight_journal_stays_small_under_load(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A busy sidecar always has a request open: the journal is compacted to the open ones
    instead of growing with every request served, and still knows which are open."""
    import latentguard.server.spool as spool_module
    from latentguard.server.spool import Spool

    monkeypatch.setattr(spool_module, "JOURNAL_COMPACT_BYTES", 4096)
    spool = Spool(tmp_path)
    spool.prepare()
    always_open = trace("long-running")
    spool.journal([always_open], [])
    for i in range(200):
        t = trace(f"short-{i}")
        spool.journal([t], [])
        spool.journal([], [t.id])
    assert spool._journal.path.stat().st_size < 3 * 4096
    assert [t.id for t in spool.interrupted(set())] == [always_open.id]


async def test_stored_says_when_a_trace_can_be_read(
    redis_server: RedisServer, store: Store, data_dir: Path, writers: list[TraceWriter]
) -> None:
    """Generate hands out a trace id only once the trace is readable: stored() returns when it
    is in the store, or False after its timeout while the store is away."""
    writer = start(writers, store, data_dir)
    t = trace()
    writer.save(t)
    assert await writer.stored(t.id, WAIT_S)
    assert await stored(store, t.id)
    redis_server.stop()
    late = trace("late")
    writer.save(late)
    assert not await writer.stored(late.id, 0.5)


async def test_a_segment_failing_once_otherwise_is_tried_again_not_set_aside(
    store: Store, data_dir: Path, writers: list[TraceWriter],
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error that is not the store being away (a client failing once on its own) costs a
    retry; only a segment failing BAD_SEGMENT_TRIES times is set aside."""
    real = store.traces.save_many
    failures = []

    async def flaky(traces: Any) -> None:
        if not failures:
            failures.append(1)
            raise AttributeError("'NoneType' object has no attribute 'writelines'")
        await real(traces)

    monkeypatch.setattr(store.traces, "save_many", flaky)
    writer = start(writers, store, data_dir)
    batch = [trace(f"r{i}") for i in range(100)]  # more than one pipeline (SAVE_BATCH)
    for t in batch:
        writer.save(t)
    await asyncio.wait_for(writer.flush(), WAIT_S)
    await eventually(lambda: stored(store, batch[-1].id), "the segment was stored")
    assert failures and all([await stored(store, t.id) for t in batch])
    assert not list(writer.spool.dir.glob("failed-*"))
