"""The store: Redis through one code path, embedded by default.

With no Redis URL the sidecar starts a private redis-server on a unix socket with append-only
persistence in the data directory; with a URL it uses that Redis, or with a
`redis+cluster://` URL that Redis Cluster (`client.py`). Everything else is the same: keys are
laid out so that each script or transaction touches one slot (`keys.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterPubSub, RedisCluster

from latentguard.server.errors import STORE_UNAVAILABLE
from latentguard.server.store.alerts import AlertStream
from latentguard.server.store.client import Client, connect
from latentguard.server.store.embedded import RedisServer
from latentguard.server.store.keys import Keys
from latentguard.server.store.layout import StoreLayoutError, ensure_layout
from latentguard.server.store.traces import TraceStore
from latentguard.server.store.versioned import VersionedStore

__all__ = ["AlertStream", "Store", "StoreLayoutError", "TraceStore", "VersionedStore"]

log = logging.getLogger(__name__)

ChangeCallback = Callable[[dict[str, Any]], Awaitable[None]]
_INTERRUPTED: tuple[type[Exception], ...] = (*STORE_UNAVAILABLE, ConnectionError, OSError)
"""What ends a change-notice read without ending the watch."""


class Store:
    """Rules, policies, traces and alerts in one Redis."""

    def __init__(
        self, client: Client, *, prefix: str = "lg",
        retention: timedelta = timedelta(days=7), alert_maxlen: int = 100_000,
        embedded: RedisServer | None = None,
    ) -> None:
        self.client = client
        self.keys = Keys(prefix)
        self.rules = VersionedStore(client, self.keys, "rule")
        self.policies = VersionedStore(client, self.keys, "policy")
        self.traces = TraceStore(client, self.keys, retention)
        self.alerts = AlertStream(client, self.keys, alert_maxlen, retention)
        self._embedded = embedded
        self.cluster = isinstance(client, RedisCluster)
        """A Redis Cluster (`redis+cluster://`), not one Redis."""

    @classmethod
    async def open(
        cls, url: str | None, data_dir: Path, **kwargs: Any
    ) -> Store:
        """Connects to `url`, or starts the embedded Redis under `data_dir` when it is None;
        checks the stored key layout (moving an earlier layout's traces, once)."""
        embedded = None
        if url is None:
            # Started from the event loop's own thread on purpose: the server is tied to the
            # life of the thread that starts it (PR_SET_PDEATHSIG), which must outlive the store.
            embedded = RedisServer(data_dir).start()
            url = embedded.url
        client = connect(url)
        try:
            if isinstance(client, RedisCluster):
                # The slot map before any concurrent use: commands sent meanwhile would go to
                # a default node, and the MOVED replies make the client re-read the map while
                # other commands use its connections.
                await client.initialize()
            await client.ping()
            await ensure_layout(client, Keys(kwargs.get("prefix", "lg")))
        except Exception:
            await client.aclose()
            if embedded is not None:
                embedded.stop()
            raise
        return cls(client, embedded=embedded, **kwargs)

    async def revision(self) -> int:
        return int(await self.client.get(self.keys.revision) or 0)

    async def watch_changes(self, callback: ChangeCallback, poll_s: float = 1.0) -> None:
        """Calls `callback(notice)` on each rule or policy change, until cancelled.

        Pub/sub delivers notices within milliseconds; the revision is also polled every
        `poll_s` so a notice lost to a reconnect still triggers a reload within that time.
        Nothing ends the watch but cancelling it: after any error (the store away, a cluster
        node restarting, a failed reload) it subscribes again, and a change whose callback
        failed is delivered again by the next poll.
        """
        seen = await self.revision()
        pubsub: PubSub | ClusterPubSub | None = None
        try:
            while True:
                try:
                    if pubsub is None:
                        # On a cluster, the node of the channel's slot: PUBLISH reaches every
                        # node, and a new one is chosen after an error (that node restarted).
                        pubsub = self.client.pubsub()
                        await pubsub.subscribe(self.keys.changes)
                    msg = await pubsub.get_message(ignore_subscribe_messages=True,
                                                   timeout=poll_s)
                    if msg is not None:
                        notice = json.loads(msg["data"])
                        await callback(notice)
                        seen = max(seen, int(notice.get("revision", 0)))
                        continue
                    current = await self.revision()
                    if current != seen:
                        await callback({"kind": "poll", "revision": current})
                        seen = current
                except Exception as exc:
                    if isinstance(exc, _INTERRUPTED):
                        log.warning("change notices interrupted (%s); retrying", exc)
                    else:  # e.g. a cluster client failing once while it re-reads the slot map
                        log.exception("change notices failed; retrying")
                    if pubsub is not None:
                        await _close(pubsub)
                        pubsub = None
                    await asyncio.sleep(poll_s)
        finally:
            if pubsub is not None:
                await _close(pubsub)

    async def close(self) -> None:
        await self.client.aclose()
        if self._embedded is not None:
            self._embedded.stop()
            self._embedded = None


async def _close(pubsub: PubSub | ClusterPubSub) -> None:
    # Bounded: closing a pub/sub connection cancelled mid-read can otherwise hang.
    with contextlib.suppress(Exception):
        await asyncio.wait_for(pubsub.aclose(), 2)
