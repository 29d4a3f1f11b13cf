"""The trace writer against a real redis-server that the tests stop and restart.

Each test starts its own redis-server on a free loopback port, so it can take Redis away from
the writer (stop the process) and bring it back on the same port, as an outage of a shared Redis
would. What is checked is behaviour only: what ends up in the store, in the spool file, or is
dropped.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from latentguard.monitors.rules import RuleHit
from latentguard.server.errors import NotFound
from latentguard.server.records import AlertRecord, TraceRecord
from latentguard.server.store import Store
from latentguard.server.store.embedded import RedisServer, free_port
from latentguard.server.writer import TraceWriter

# Generous bound for anything that should finish at once (slow shared CI machines).
WAIT_S = 20.0


def hit(rule: str = "r1") -> RuleHit:
    return RuleHit(rule=rule, severity="high", action="block", position=2, score=2.5,
                   explanation=f"{rule} fired")


def trace(tag: str = "req") -> TraceRecord:
    return TraceRecord(request_tag=tag, model="m", hits=[hit()])


def alert(of: TraceRecord) -> AlertRecord:
    return AlertRecord(trace_id=of.id, request_tag=of.request_tag, model=of.model, hit=hit())


def spool_lines(spool: Path) -> list[dict]:
    return [json.loads(line) for line in spool.read_text().splitlines() if line.strip()]


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


def start(writers: list[TraceWriter], store: Store, data_dir: Path, *,
          deadline_s: float = 5.0) -> TraceWriter:
    writer = TraceWriter(store, data_dir, deadline_s=deadline_s).start()
    writers.append(writer)
    return writer


async def test_trace_and_alert_are_in_the_store_after_flush(
    store: Store, data_dir: Path, writers: list[TraceWriter]
) -> None:
    """A saved trace and a published alert are both written by the time flush() returns."""
    writer = start(writers, store, data_dir)
    t = trace()
    writer.save(t)
    writer.publish(alert(t))
    await asyncio.wait_for(writer.flush(), WAIT_S)

    got = await store.traces.get(t.id)
    assert got.request_tag == "req" and got.rules_hit == ["r1"] and got.status == "flagged"
    assert await store.alerts.length() == 1
    first = await anext(aiter(store.alerts.follow("0")))
    assert first.trace_id == t.id and first.hit.rule == "r1"
    assert not writer.spool.exists()


async def test_store_down_spools_the_trace_and_drops_the_alert(
    redis_server: RedisServer, store: Store, data_dir: Path, writers: list[TraceWriter],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With Redis gone past the deadline, flush() still returns: the trace is in the spool as
    JSON, the alert is dropped with an error logged, nothing is lost silently."""
    writer = start(writers, store, data_dir, deadline_s=0.5)
    redis_server.stop()
    t = trace()
    with caplog.at_level(logging.ERROR, logger="latentguard.server.writer"):
        writer.save(t)
        writer.publish(alert(t))
        await asyncio.wait_for(writer.flush(), WAIT_S)

    # One line, the trace: the alert is not kept anywhere.
    [line] = spool_lines(writer.spool)
    assert TraceRecord.model_validate(line) == t
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("spooled" in m and t.id in m for m in errors)
    assert any("dropped" in m and t.id in m for m in errors)


async def test_restart_replays_the_spool_into_the_store(
    redis_server: RedisServer, store: Store, data_dir: Path, writers: list[TraceWriter]
) -> None:
    """Traces spooled during an outage are in the store once a new writer starts against the
    restarted Redis, and the spool file is gone."""
    first = start(writers, store, data_dir, deadline_s=0.5)
    redis_server.stop()
    spooled = [trace("a"), trace("b")]
    for t in spooled:
        first.save(t)
    await asyncio.wait_for(first.flush(), WAIT_S)
    await asyncio.wait_for(first.close(), WAIT_S)
    assert len(spool_lines(first.spool)) == 2

    redis_server.start()  # same port, empty database
    second = start(writers, store, data_dir)
    later = trace("c")
    second.save(later)  # queued behind the replay
    await asyncio.wait_for(second.flush(), WAIT_S)

    for t in [*spooled, later]:
        assert (await store.traces.get(t.id)).request_tag == t.request_tag
    assert not second.spool.exists()


async def test_replay_while_store_still_down_keeps_the_spool(
    redis_server: RedisServer, store: Store, data_dir: Path, writers: list[TraceWriter]
) -> None:
    """A writer started while Redis is still down spools the replayed traces again (nothing is
    lost), and a later start with Redis back stores them."""
    redis_server.stop()
    first = start(writers, store, data_dir, deadline_s=0.3)
    t = trace()
    first.save(t)
    await asyncio.wait_for(first.flush(), WAIT_S)
    await asyncio.wait_for(first.close(), WAIT_S)

    second = start(writers, store, data_dir, deadline_s=0.3)
    await asyncio.wait_for(second.flush(), WAIT_S)
    await asyncio.wait_for(second.close(), WAIT_S)
    assert [TraceRecord.model_validate(x) for x in spool_lines(second.spool)] == [t]

    redis_server.start()
    third = start(writers, store, data_dir)
    await asyncio.wait_for(third.flush(), WAIT_S)
    assert await stored(store, t.id)
    assert not third.spool.exists()


async def test_brief_outage_is_retried_not_spooled(
    redis_server: RedisServer, store: Store, data_dir: Path, writers: list[TraceWriter]
) -> None:
    """A write that fails while Redis is down and succeeds once it is back, within the deadline,
    lands in the store and not in the spool (retry with backoff)."""
    writer = start(writers, store, data_dir, deadline_s=15.0)
    redis_server.stop()
    t = trace()
    writer.save(t)
    writer.publish(alert(t))
    flushed = asyncio.create_task(writer.flush())
    await asyncio.sleep(0.3)
    assert not flushed.done(), "the write cannot have succeeded with Redis down"

    # Started from a thread so the event loop (and the writer's retries) keep running meanwhile.
    await asyncio.to_thread(redis_server.start)
    await asyncio.wait_for(flushed, WAIT_S)

    assert (await store.traces.get(t.id)).request_tag == "req"
    assert await store.alerts.length() == 1
    assert not writer.spool.exists()


async def test_close_writes_what_was_queued_before_it(
    store: Store, data_dir: Path
) -> None:
    """close() returns only after every trace and alert queued before it is written."""
    writer = TraceWriter(store, data_dir).start()
    queued = [trace(f"t{i}") for i in range(20)]
    for t in queued:
        writer.save(t)
        writer.publish(alert(t))
    await asyncio.wait_for(writer.close(), WAIT_S)

    for t in queued:
        assert await stored(store, t.id)
    assert await store.alerts.length() == len(queued)


async def test_corrupt_spool_line_is_set_aside_and_the_rest_replayed(
    store: Store, data_dir: Path, writers: list[TraceWriter], caplog: pytest.LogCaptureFixture
) -> None:
    """A spool line that is not a trace (torn write, bad bytes, wrong shape) does not stop the
    replay: the good lines are stored, the bad ones are kept in the .bad file with an error
    logged, and the writer goes on writing new traces."""
    good = [trace("a"), trace("b")]
    bad_lines = [b'{"id": "0123", "request_', b"\xff\xfe not utf-8", b'{"id": 5}']
    data_dir.mkdir(parents=True)
    spool = data_dir / "spool-traces.jsonl"
    spool.write_bytes(b"\n".join([
        good[0].model_dump_json().encode(), *bad_lines, b"", good[1].model_dump_json().encode(),
    ]) + b"\n")

    with caplog.at_level(logging.ERROR, logger="latentguard.server.writer"):
        writer = start(writers, store, data_dir)
        later = trace("c")
        writer.save(later)
        await asyncio.wait_for(writer.flush(), WAIT_S)

    for t in [*good, later]:
        assert await stored(store, t.id)
    assert not spool.exists()
    assert (data_dir / "spool-traces.bad.jsonl").read_bytes().splitlines() == bad_lines
    assert sum("not a trace" in r.getMessage() for r in caplog.records) == len(bad_lines)


async def test_store_refusing_writes_spools_and_the_writer_goes_on(
    store: Store, data_dir: Path, writers: list[TraceWriter]
) -> None:
    """An error that is not a lost connection (Redis out of memory refuses writes) spools the
    trace instead of ending the writer loop: the next write after Redis recovers is stored."""
    writer = start(writers, store, data_dir)
    await store.client.config_set("maxmemory", "1")  # noeviction: every write is refused
    try:
        refused = trace("refused")
        writer.save(refused)
        writer.publish(alert(refused))
        await asyncio.wait_for(writer.flush(), WAIT_S)
    finally:
        await store.client.config_set("maxmemory", "0")
    assert [TraceRecord.model_validate(x) for x in spool_lines(writer.spool)] == [refused]
    assert await store.alerts.length() == 0

    after = trace("after")
    writer.save(after)
    await asyncio.wait_for(writer.flush(), WAIT_S)
    assert await stored(store, after.id)
