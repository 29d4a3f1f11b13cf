"""What happens to a request, as the sidecar sees it, for those who wait on it (Generate,
Inspect): typed events on one queue per request, and the hub that holds those queues."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from torch import Tensor

from latentguard.monitors.rules import RuleHit
from latentguard.server.records import TokenRecord, TraceRecord
from latentguard.wire import Verdict

__all__ = ["Event", "HitFound", "HttpDone", "RequestEnded", "RowTap", "TextChunk", "TokensSeen",
           "VerdictGiven", "Watcher", "Watchers"]


@dataclass(frozen=True)
class TokensSeen:
    """Tokens of the request the step recorded, and the watched features' values on them."""

    records: list[TokenRecord]
    series: dict[int, list[float]] = field(default_factory=dict)


@dataclass(frozen=True)
class HitFound:
    hit: RuleHit


@dataclass(frozen=True)
class VerdictGiven:
    verdict: Verdict


@dataclass(frozen=True)
class RequestEnded:
    trace: TraceRecord | None
    """The stored trace; None when the request's trace is not stored (policy, trace_store)."""


@dataclass(frozen=True)
class TextChunk:
    """Text vLLM streamed back to the caller (put by the service that called it)."""

    text: str
    finish_reason: str = ""


@dataclass(frozen=True)
class HttpDone:
    """vLLM's response is complete; ``error`` when the call failed."""

    error: Exception | None = None


Event = TokensSeen | HitFound | VerdictGiven | RequestEnded | TextChunk | HttpDone

RowTap = Callable[[str, Sequence[int], Sequence[int], Tensor], None]
"""Called with (request tag, positions, token ids, rows) for every span received."""


class Watcher(asyncio.Queue[Event]):
    """The events of one request."""

    def __init__(self, features: Sequence[int] = ()) -> None:
        super().__init__()
        self.features = list(features)
        """Features whose values on every token are wanted (`TokensSeen.series`)."""


class Watchers:
    """Requests someone waits on, by request tag, and the row taps (for tests and debugging
    tools that need the raw rows)."""

    def __init__(self) -> None:
        self._by_tag: dict[str, Watcher] = {}
        self.taps: list[RowTap] = []

    def watch(self, tag: str, features: Sequence[int] = ()) -> Watcher:
        watcher = Watcher(features)
        self._by_tag[tag] = watcher
        return watcher

    def unwatch(self, tag: str) -> None:
        self._by_tag.pop(tag, None)

    def get(self, tag: str) -> Watcher | None:
        return self._by_tag.get(tag)

    def put(self, tag: str, event: Event) -> None:
        """Hands the event to the request's watcher, if anyone watches it."""
        watcher = self._by_tag.get(tag)
        if watcher is not None:
            watcher.put_nowait(event)

    def __bool__(self) -> bool:
        return bool(self._by_tag)
