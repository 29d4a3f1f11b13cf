"""Per-step capture inside the vLLM worker: rows -> sidecar -> verdicts -> block / steer.

Decoder layer L calls the `latentguard::tap` op on its output (see `_tap`: an op, not a
forward hook, so that it also runs in compiled mode). The tap takes the residual stream (vLLM
layers return (hidden, residual); the stream is their sum), maps every row of the flattened
batch to its request with the runner's query_start_loc, sends one StepBatch, and applies
verdicts: blocked requests are forced to EOS by the logits processor, steered requests get
their rows edited in place.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from latentguard import wire
from latentguard.monitors.errors import MonitorError
from latentguard.monitors.rules import Steer
from latentguard.monitors.sae import SAE
from latentguard.plugin._affinity import helper_cpus, move_current_thread
from latentguard.plugin._client import SidecarClient
from latentguard.plugin._notices import NOTICE_ARG, Notice, NoticeSender, notices_dir
from latentguard.plugin._settings import PluginSettings
from latentguard.plugin._tap import check_compilation, key_compile_cache, wrap_layer
from latentguard.v1 import monitor_pb2, rules_pb2

log = logging.getLogger(__name__)

TAG_ARG = "latentguard_tag"
POLICY_ARG = "latentguard_policy"
STEER_ARG = "latentguard_steer"
UNAVAILABLE = "sidecar-unavailable"
#: An engine idle this long has no running request: every tracked request has ended.
IDLE_END_S = 0.3

@dataclass
class Tracked:
    rid: str
    tag: str
    policy: str
    state: Any  # vLLM's CachedRequestState (its output_token_ids grows as tokens are sampled)
    generation: int = -1  # client generation the request was announced on
    blocked_by: str = ""
    block_reason: str = ""
    notice: str = ""  # the middleware's key (NOTICE_ARG): told of the block once it applies
    noticed: bool = False
    steer: Steer | None = None
    steer_left: int | None = None
    gap: bool = False


def find_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    for name, module in model.named_modules():
        if name.endswith("layers") and isinstance(module, torch.nn.ModuleList):
            return module
    raise RuntimeError(f"latentguard: no decoder layer list found in {type(model).__name__}")


class Capture:
    instance: ClassVar[Capture | None] = None

    def __init__(self, runner: Any, settings: PluginSettings, sae: SAE | None,
                 layer: int) -> None:
        self.runner = runner
        self.settings = settings
        self.sae = sae
        self.layer = layer
        self.tracked: dict[str, Tracked] = {}
        self.step = 0
        self._lock = threading.Lock()
        self._last_step = time.monotonic()
        self._in_forward = False
        model_config = runner.vllm_config.model_config
        hello = monitor_pb2.Hello(client="vllm-worker", model=str(model_config.model),
                                  hook_name=sae.hook_name if sae is not None else "",
                                  d_model=int(model_config.get_hidden_size()))
        # Called on the model's thread, after vLLM bound it to its cores.
        self.client = SidecarClient(settings, hello, cpus=helper_cpus(settings.cpus))
        self.notices = NoticeSender(notices_dir())

    # ---- attaching ----------------------------------------------------------------------

    @classmethod
    def attach(cls, runner: Any) -> Capture:
        if cls.instance is not None:
            return cls.instance
        check_compilation(runner.vllm_config)
        settings = PluginSettings.from_env()
        sae = None
        if settings.sae_path:
            from latentguard.monitors.sae import load_sae

            # On the model's device: steering edits the stream where it lives.
            sae = load_sae(settings.sae_path, device=getattr(runner, "device", "cpu"))
        layer = settings.layer if settings.layer is not None else (sae.layer if sae else None)
        capture = cls(runner, settings, sae, layer if layer is not None else -1)
        capture.client.start(wait_s=settings.connect_timeout_s)
        if layer is None:
            ready = capture.client.ready
            if ready is None:
                # vLLM must not die because the sidecar is away: serve unmonitored, loudly.
                log.error("latentguard: NOT monitoring: no LATENTGUARD_SAE_PATH or "
                          "LATENTGUARD_LAYER, and the sidecar %s did not say which layer to "
                          "read within %.0f s", settings.target, settings.connect_timeout_s)
                capture.client.close()
                return capture
            capture.layer = ready.layer
        layers = find_layers(runner.model)
        if not 0 <= capture.layer < len(layers):
            raise RuntimeError(f"latentguard: layer {capture.layer} out of range: the model "
                               f"has {len(layers)} decoder layers")
        if not runner.vllm_config.model_config.enforce_eager:
            key_compile_cache(runner.vllm_config, capture.layer)
        wrap_layer(layers[capture.layer], capture.tap)
        cls.instance = capture
        update = getattr(runner, "_update_states", None)
        if callable(update):
            # The scheduler names finished requests in the next step's input, and schedules
            # a step with no tokens just for that when nothing else runs: the exact end of
            # every request, with no guessing from time.
            def _update_states(scheduler_output: Any, *args: Any, **kwargs: Any) -> Any:
                capture.finished(getattr(scheduler_output, "finished_req_ids", None) or ())
                return update(scheduler_output, *args, **kwargs)

            runner._update_states = _update_states
        else:
            log.warning("latentguard: %s has no _update_states: request ends are inferred "
                        "from idle time", type(runner).__name__)
            # Only this fallback reads when forwards run: no hooks per forward otherwise.
            runner.model.register_forward_pre_hook(capture._before_model)
            runner.model.register_forward_hook(capture._after_model)
            threading.Thread(target=capture._end_idle, name="latentguard-idle",
                             daemon=True).start()
        log.info("latentguard: capturing the residual stream after layer %d of %s",
                 capture.layer, type(runner.model).__name__)
        return capture

    # ---- hooks --------------------------------------------------------------------------

    def _before_model(self, module: Any, args: Any) -> None:
        self._in_forward = True
        self._last_step = time.monotonic()

    def _after_model(self, module: Any, args: Any, output: Any) -> None:
        self._in_forward = False
        self._last_step = time.monotonic()

    def tap(self, hidden: torch.Tensor, residual: torch.Tensor | None,
            positions: torch.Tensor) -> None:
        """Layer L's output at one step (called by the `latentguard::tap` op)."""
        batch = self.runner.input_batch
        n_reqs = batch.num_reqs
        if n_reqs == 0:
            return  # a dummy run during start-up
        try:
            with self._lock:
                self._step(hidden, residual, positions, list(batch.req_ids[:n_reqs]), n_reqs)
        except Exception:
            # vLLM never crashes because of the monitor: log, and requests continue.
            log.exception("latentguard: capture failed at step %d", self.step)

    def finished(self, req_ids: Any) -> list[monitor_pb2.RequestEnd]:
        """Reports the end of the requests vLLM says finished (before it forgets them)."""
        if not req_ids:
            return []
        with self._lock:
            return self._send_ends([t for rid in req_ids
                                    if (t := self.tracked.pop(rid, None)) is not None])

    def _end_idle(self) -> None:
        move_current_thread(self.client.cpus)
        while True:
            time.sleep(IDLE_END_S / 2)
            self.end_if_idle()

    def end_if_idle(self) -> list[monitor_pb2.RequestEnd]:
        """Reports the end of requests once the engine goes idle, and returns those ends.

        The worker hears that a request finished only at the next step; when there is none,
        the requests it still tracks have all ended (an idle engine runs nothing). Idle means
        no forward running and none for IDLE_END_S: a long prefill step is not idleness (ending
        its requests early would split each of their traces in two).
        """
        with self._lock:
            if not self.tracked or self._in_forward \
                    or time.monotonic() - self._last_step < IDLE_END_S:
                return []
            ended = list(self.tracked.values())
            self.tracked.clear()
            return self._send_ends(ended)

    def _send_ends(self, requests: list[Tracked]) -> list[monitor_pb2.RequestEnd]:
        """One step that only reports the end of `requests` (those the sidecar was told of
        on the current connection); the caller holds the lock."""
        ended = [self._end(t) for t in requests if t.generation == self.client.generation]
        if ended:
            self.step += 1
            self.client.send(monitor_pb2.StepBatch(step=self.step, finished=ended), wait_s=None)
        return ended

    # ---- one step -----------------------------------------------------------------------

    def _track(self, req_ids: list[str]) -> tuple[list[monitor_pb2.RequestStart],
                                                  list[monitor_pb2.RequestEnd]]:
        requests = self.runner.requests
        ended = []
        for rid in [r for r in self.tracked if r not in requests]:
            gone = self.tracked.pop(rid)
            if gone.generation == self.client.generation:
                ended.append(self._end(gone))
        started = []
        for rid in req_ids:
            t = self.tracked.get(rid)
            if t is None:
                state = requests[rid]
                extra = (state.sampling_params.extra_args or {}) if state.sampling_params else {}
                t = Tracked(rid=rid, tag=str(extra.get(TAG_ARG) or rid),
                            policy=str(extra.get(POLICY_ARG) or ""), state=state,
                            notice=str(extra.get(NOTICE_ARG) or ""))
                self.tracked[rid] = t
                if extra.get(STEER_ARG):
                    self._own_steer(t, extra[STEER_ARG])
            if t.generation != self.client.generation and self.client.connected.is_set():
                t.generation = self.client.generation
                start = monitor_pb2.RequestStart(
                    request_tag=t.tag, policy=t.policy, model=self.client.hello.model,
                    prompt_tokens=int(t.state.num_prompt_tokens))
                if t.steer is not None:
                    start.steer.CopyFrom(wire.steer_proto(t.steer))  # recorded, not echoed
                started.append(start)
        return started, ended

    def _own_steer(self, t: Tracked, raw: object) -> None:
        """Steering the request asked for: checked against the SAE here and applied from its
        first row; a bad one is refused (logged) and the request runs unsteered."""
        try:
            # vllm_xargs carry flat values: JSON text.
            steer = Steer.model_validate(json.loads(raw) if isinstance(raw, str) else raw)
            wire.check_steer(steer, STEER_ARG, self.sae.d_sae if self.sae is not None else None)
        except (ValueError, MonitorError) as exc:
            log.error("latentguard: request %s: %s refused: %s", t.rid, STEER_ARG, exc)
            return
        t.steer, t.steer_left = steer, steer.tokens or None

    def _end(self, t: Tracked) -> monitor_pb2.RequestEnd:
        out = t.state.output_token_ids
        params = t.state.sampling_params
        eos = self.eos_ids
        if t.blocked_by:
            reason = "blocked"
        elif out and out[-1] in eos:
            reason = "stop"
        elif params is not None and params.max_tokens is not None and \
                len(out) >= params.max_tokens:
            reason = "length"
        else:
            reason = "stop"
        return monitor_pb2.RequestEnd(request_tag=t.tag, finish_reason=reason,
                                      completion_tokens=len(out), monitoring_gap=t.gap)

    @property
    def eos_ids(self) -> set[int]:
        eos = self.runner.vllm_config.model_config.hf_text_config.eos_token_id
        return set(eos) if isinstance(eos, list) else ({eos} if eos is not None else set())

    def policy(self, t: Tracked) -> rules_pb2.Policy | None:
        policies = self.client.policies
        return policies.get(t.policy) or policies.get(self.client.default_policy)

    def _step(self, hidden: torch.Tensor, residual: torch.Tensor | None,
              positions_t: torch.Tensor, req_ids: list[str], n_reqs: int) -> None:
        self.step += 1
        for verdicts in self.client.drain():
            self._apply(verdicts)
        started, ended = self._track(req_ids)
        qsl = self.runner.query_start_loc.cpu[: n_reqs + 1].tolist()
        total = qsl[-1]
        stream = hidden[:total] if residual is None else hidden[:total] + residual[:total]
        if positions_t.dim() > 1:  # M-RoPE: (3, tokens), the rows agree for text
            positions_t = positions_t[0]
        positions = positions_t[:total].tolist()
        ids = self.runner.input_ids.gpu[:total].tolist()

        spans, sync, wait_ms = [], [], 0
        row0 = 0  # next row of the tensor sent
        send_rows = []
        for i, rid in enumerate(req_ids):
            t = self.tracked[rid]
            policy = self.policy(t)
            if policy is not None and policy.HasField("monitoring") and not policy.monitoring:
                continue
            lo, hi = qsl[i], qsl[i + 1]
            if hi <= lo:
                continue
            n_prompt = int(t.state.num_prompt_tokens)
            # Split at the prompt boundary so each span is all prompt or all generated rows.
            cut = lo + max(0, min(hi - lo, n_prompt - positions[lo]))
            for a, b, prefill in ((lo, cut, True), (cut, hi, False)):
                if b > a:
                    spans.append(monitor_pb2.RowSpan(
                        request_tag=t.tag, row_start=row0, positions=positions[a:b],
                        token_ids=ids[a:b], prefill=prefill))
                    row0 += b - a
            send_rows.append(stream[lo:hi])
            if policy is not None and policy.mode == rules_pb2.MONITOR_MODE_SYNC \
                    and not t.blocked_by:
                sync.append(t)
                wait_ms = max(wait_ms, policy.timeout_ms or self.settings.timeout_ms)

        reply = None
        if spans or started or ended:
            rows = torch.cat(send_rows) if send_rows else stream[:0]
            batch = monitor_pb2.StepBatch(step=self.step, started=started, spans=spans,
                                          finished=ended, rows=wire.rows_proto(rows))
            t0 = time.perf_counter()
            reply = self.client.send(batch, wait_s=wait_ms / 1000 if sync else None)
            if sync and reply is None:
                log.warning("latentguard: no verdict for step %d within %d ms (%.0f ms)",
                            self.step, wait_ms, (time.perf_counter() - t0) * 1000)
        if reply is not None:
            self._apply(reply)
        elif sync or not self.client.connected.is_set():
            self._fail([self.tracked[r] for r in req_ids] if not sync else sync)
        self._steer(hidden, stream, qsl, req_ids)

    def _fail(self, requests: list[Tracked]) -> None:
        for t in requests:
            policy = self.policy(t)
            closed = policy.on_failure == rules_pb2.FAILURE_MODE_CLOSED if policy is not None \
                else self.settings.on_failure == "closed"
            if closed and not t.blocked_by:
                t.blocked_by = UNAVAILABLE
                t.block_reason = "the sidecar did not answer and the policy fails closed"
                log.warning("latentguard: blocking %s (sidecar unavailable, fail-closed)", t.tag)
            t.gap = True

    def _apply(self, verdicts: monitor_pb2.StepVerdicts) -> None:
        by_tag = {t.tag: t for t in self.tracked.values()}
        for msg in verdicts.verdicts:
            t = by_tag.get(msg.request_tag)
            if t is None:
                continue
            try:
                v = wire.verdict_model(msg)
            except MonitorError as exc:
                log.error("latentguard: unusable verdict for %s: %s", t.tag, exc)
                continue
            if v is None:
                continue
            if v.kind == "block" and not t.blocked_by:
                t.blocked_by, t.block_reason = v.rule or "blocked", v.reason
                log.info("latentguard: blocking %s: %s", t.tag, v.reason)
            elif v.kind == "steer" and v.steer is not None:
                t.steer, t.steer_left = v.steer, v.steer.tokens or None

    def _steer(self, hidden: torch.Tensor, stream: torch.Tensor, qsl: list[int],
               req_ids: list[str]) -> None:
        for i, rid in enumerate(req_ids):
            t = self.tracked.get(rid)
            if t is None or t.steer is None:
                continue
            if self.sae is None:
                log.warning("latentguard: cannot steer %s: set LATENTGUARD_SAE_PATH", t.tag)
                t.steer = None
                continue
            lo, hi = qsl[i], qsl[i + 1]
            from latentguard.monitors.steering import apply_steer

            # The SAE reads hidden + residual; only `hidden` is vLLM's to edit, so it takes the
            # whole change (preserve_norm included: the norm is the stream's).
            rows = stream[lo:hi].float()
            hidden[lo:hi] += (apply_steer(rows, self.sae, t.steer) - rows).to(hidden.dtype)
            if t.steer_left is not None:
                t.steer_left -= hi - lo
                if t.steer_left <= 0:
                    t.steer = None

    # ---- for the logits processor -------------------------------------------------------

    def rows_to_block(self) -> list[int]:
        """The batch rows of blocked requests; the API server hears of each block here, once,
        before its EOS is sampled (see `_notices`)."""
        index = self.runner.input_batch.req_id_to_index
        rows = []
        for rid, t in self.tracked.items():
            if t.blocked_by and rid in index:
                rows.append(index[rid])
                if t.notice and not t.noticed:
                    t.noticed = True
                    self.notices.send(Notice(key=t.notice, request_id=rid, rule=t.blocked_by,
                                             reason=t.block_reason, tag=t.tag))
        return rows
