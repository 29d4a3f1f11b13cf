"""The worker's persistent Monitor stream to the sidecar, on its own threads.

It reconnects by itself (jittered backoff up to 5 s). A step sent in sync mode is waited for
by step number; every other reply lands in an inbox the capture drains at its next step. While
disconnected, `send` returns None at once and the capture applies each request's failure policy.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from dataclasses import dataclass, field

import grpc

from latentguard.plugin._affinity import move_current_thread
from latentguard.plugin._settings import PluginSettings
from latentguard.v1 import monitor_pb2, monitor_pb2_grpc, rules_pb2

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 5.0


@dataclass
class _Waiter:
    event: threading.Event = field(default_factory=threading.Event)
    reply: monitor_pb2.StepVerdicts | None = None


class SidecarClient:
    def __init__(self, settings: PluginSettings, hello: monitor_pb2.Hello,
                 cpus: set[int] | None = None) -> None:
        self.settings = settings
        self.hello = hello
        self.cpus = cpus
        """Cores for this client's thread and the gRPC threads it starts (None: inherit)."""
        self.ready: monitor_pb2.Ready | None = None
        self.policies: dict[str, rules_pb2.Policy] = {}
        self.default_policy = "default"
        self.connected = threading.Event()
        self.generation = 0
        """Counts successful connections; a new one means open requests must be re-announced."""
        self._lock = threading.Lock()
        self._waiters: dict[int, _Waiter] = {}
        self._inbox: list[monitor_pb2.StepVerdicts] = []
        self._out: queue.Queue[monitor_pb2.MonitorMessage | None] = queue.Queue()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="latentguard-sidecar",
                                        daemon=True)

    def start(self, wait_s: float = 0.0) -> SidecarClient:
        self._thread.start()
        if wait_s > 0 and not self.connected.wait(wait_s):
            log.warning("latentguard: sidecar %s not reachable yet; requests follow their "
                        "failure policy until it is", self.settings.target)
        return self

    def close(self) -> None:
        self._closed.set()
        self._out.put(None)

    # ---- sending ------------------------------------------------------------------------

    def send(self, step: monitor_pb2.StepBatch, *, wait_s: float | None
             ) -> monitor_pb2.StepVerdicts | None:
        """Sends a step; with `wait_s`, returns its verdicts (None on timeout or outage)."""
        if not self.connected.is_set():
            return None
        waiter = None
        if wait_s is not None:
            waiter = _Waiter()
            with self._lock:
                self._waiters[step.step] = waiter
        self._out.put(monitor_pb2.MonitorMessage(step=step))
        if waiter is None:
            return None
        got = waiter.event.wait(wait_s)
        with self._lock:
            self._waiters.pop(step.step, None)
        return waiter.reply if got else None

    def drain(self) -> list[monitor_pb2.StepVerdicts]:
        with self._lock:
            inbox, self._inbox = self._inbox, []
        return inbox

    # ---- the stream ---------------------------------------------------------------------

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.settings.token}"),) if self.settings.token \
            else ()

    def _run(self) -> None:
        move_current_thread(self.cpus)  # before the channel: gRPC's threads inherit the mask
        backoff = 0.1
        while not self._closed.is_set():
            out: queue.Queue[monitor_pb2.MonitorMessage | None] = queue.Queue()
            self._out = out
            out.put(monitor_pb2.MonitorMessage(hello=self.hello))
            try:
                with grpc.insecure_channel(self.settings.target) as channel:
                    replies = monitor_pb2_grpc.MonitorStub(channel).Stream(
                        iter(out.get, None), metadata=self._metadata())
                    for reply in replies:
                        if self._on_reply(reply):
                            backoff = 0.1
            except grpc.RpcError as exc:
                code = exc.code() if hasattr(exc, "code") else None
                level = logging.ERROR if code in (grpc.StatusCode.INVALID_ARGUMENT,
                                                  grpc.StatusCode.FAILED_PRECONDITION,
                                                  grpc.StatusCode.UNAUTHENTICATED,
                                                  grpc.StatusCode.PERMISSION_DENIED) \
                    else logging.WARNING
                log.log(level, "latentguard: sidecar stream ended: %s %s", code,
                        exc.details() if hasattr(exc, "details") else exc)
            finally:
                self._disconnected(out)
            if self._closed.wait(backoff * (0.5 + random.random())):
                return
            backoff = min(backoff * 2, MAX_BACKOFF_S)

    def _on_reply(self, reply: monitor_pb2.MonitorReply) -> bool:
        kind = reply.WhichOneof("kind")
        if kind == "ready":
            self.ready = reply.ready
            self._set_policies(reply.ready.policies)
            self.default_policy = reply.ready.default_policy or "default"
            self.generation += 1
            self.connected.set()
            log.info("latentguard: connected to sidecar %s (SAE %s, layer %d)",
                     self.settings.target, reply.ready.sae_hook_name, reply.ready.layer)
            return True
        if kind == "verdicts":
            v = reply.verdicts
            if v.policy_revision:
                self._set_policies(v.policies)
            with self._lock:
                waiter = self._waiters.get(v.step)
                if waiter is None:
                    self._inbox.append(v)
            if waiter is not None:
                waiter.reply = v
                waiter.event.set()
        elif kind == "error":
            e = reply.error
            log.error("latentguard: sidecar refused step %d: %s %s: %s", e.step, e.code,
                      e.field, e.message)
            with self._lock:
                waiter = self._waiters.get(e.step)
            if waiter is not None:
                waiter.event.set()  # reply stays None: the step's requests follow their policy
        return False

    def _set_policies(self, policies: object) -> None:
        self.policies = {p.name: p for p in policies}  # type: ignore[attr-defined]

    def _disconnected(self, out: queue.Queue[monitor_pb2.MonitorMessage | None]) -> None:
        self.connected.clear()
        out.put(None)
        with self._lock:
            waiters = list(self._waiters.values())
        for w in waiters:
            w.event.set()
        time.sleep(0)  # let waiting hooks run before reconnecting
