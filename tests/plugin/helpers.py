"""Shared by the plugin tests (and the slow real-model test): what the sidecar received, and
waiting for stored traces."""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

import torch

from latentguard.server.records import TraceFilter, TraceRecord

LAYER = 0  # not the last layer: HF's last hidden state has the final norm applied


class Rows:
    """What the sidecar received: rows by (request tag, position)."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[int, torch.Tensor]] = defaultdict(dict)
        self.tokens: dict[str, dict[int, int]] = defaultdict(dict)

    def __call__(self, tag: str, positions: list[int], ids: list[int], rows: Any) -> None:
        for p, t, r in zip(positions, ids, rows, strict=True):
            self.rows[tag][p] = r
            self.tokens[tag][p] = t

    def clear(self) -> None:
        self.rows.clear()
        self.tokens.clear()


def traces(sidecar: Any, tags: list[str], timeout: float = 15.0) -> dict[str, TraceRecord]:
    store = sidecar.sidecar.store
    deadline = time.monotonic() + timeout
    while True:
        sidecar.run(sidecar.sidecar.writer.flush())
        page, _ = sidecar.run(store.traces.list(TraceFilter(page_size=1000)))
        found = {t.request_tag: t.id for t in page if t.request_tag in tags}
        if len(found) == len(tags):
            return {tag: sidecar.run(store.traces.get(i)) for tag, i in found.items()}
        assert time.monotonic() < deadline, f"traces for {set(tags) - set(found)} never came"
        time.sleep(0.1)
