"""How the worker learns that requests ended: the scheduler's finished ids, idle time as a fallback.

Pure unit test of Capture's idle logic: the runner and the sidecar client are stand-ins.
"""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Any

from latentguard.plugin import _capture
from latentguard.plugin._capture import Capture, Tracked


class Client:
    generation = 1

    def __init__(self) -> None:
        self.sent: list[Any] = []

    def send(self, batch: Any, wait_s: float | None) -> None:
        self.sent.append(batch)


def capture() -> Capture:
    c = Capture.__new__(Capture)
    c.runner = SimpleNamespace(vllm_config=SimpleNamespace(model_config=SimpleNamespace(
        hf_text_config=SimpleNamespace(eos_token_id=2))))
    c.client = Client()  # type: ignore[assignment]
    c.tracked = {"r": Tracked(rid="r", tag="t", policy="", generation=1, state=SimpleNamespace(
        output_token_ids=[5, 2], sampling_params=None))}
    c.step = 0
    c._lock = threading.Lock()
    c._in_forward = False
    c._last_step = time.monotonic()
    return c


def test_a_long_forward_is_not_idleness() -> None:
    c = capture()
    c._before_model(None, ())  # a prefill step starts and runs long
    c._last_step -= 10 * _capture.IDLE_END_S
    assert c.end_if_idle() == [] and "r" in c.tracked and not c.client.sent


def test_a_short_gap_between_forwards_is_not_idleness() -> None:
    c = capture()
    c._before_model(None, ())
    c._after_model(None, (), None)
    assert c.end_if_idle() == [] and "r" in c.tracked


def test_an_idle_engine_ends_what_it_tracks_once() -> None:
    c = capture()
    c._before_model(None, ())
    c._after_model(None, (), None)
    c._last_step -= 2 * _capture.IDLE_END_S
    ended = c.end_if_idle()
    assert [(e.request_tag, e.finish_reason, e.completion_tokens) for e in ended] == \
        [("t", "stop", 2)]
    assert len(c.client.sent) == 1 and c.client.sent[0].finished[0].request_tag == "t"
    assert c.end_if_idle() == [] and not c.tracked


def test_the_schedulers_finished_ids_end_requests_exactly() -> None:
    c = capture()
    c.tracked["q"] = Tracked(rid="q", tag="u", policy="", generation=1, state=SimpleNamespace(
        output_token_ids=[7, 8, 9], sampling_params=SimpleNamespace(max_tokens=3)))
    assert c.finished(set()) == [] and not c.client.sent
    ended = c.finished({"q", "unknown"})
    assert [(e.request_tag, e.finish_reason, e.completion_tokens) for e in ended] == \
        [("u", "length", 3)]
    assert list(c.tracked) == ["r"] and len(c.client.sent) == 1
