"""A tiny SAE whose features are readable by construction, and a Monitor-stream driver."""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import torch

from latentguard.monitors.sae import SAEConfig, StandardSAE, save_saelens
from latentguard.v1 import common_pb2, monitor_pb2, monitor_pb2_grpc

D_IN, D_SAE = 16, 32
HOOK = "blocks.1.hook_resid_post"

#: Rules over the tiny SAE's readable features: a block, a window alert, a steer.
RULES = """\
rules:
  - name: unsafe-code
    description: feature 3 high on a generated token
    severity: high
    when: {feature: 3, threshold: 2.0}
    action: {type: block}
  - name: watch-5
    severity: low
    scope: both
    when: {feature: 5, threshold: 1.0, window: {size: 2, agg: sum}}
  - name: calm-down
    severity: medium
    when: {feature: 7, threshold: 3.0}
    action: {type: steer, steer: {mode: clamp, features: [{feature: 7, value: 0.5}], tokens: 4}}
policies:
  - {name: default, rules: ["*"]}
  - {name: quiet, monitoring: false}
"""


def build_sae(folder: Path, shift: int = 0, model_name: str = "tiny-test") -> Path:
    """Feature i reads input dimension i % 16 (features 16.. read it negated), ReLU, no bias:
    a row with value v in dimension 3 activates feature 3 with exactly v. With ``shift``,
    feature i reads dimension (i + shift) % 16: another SAE of the same shape, whose feature
    3 is another feature."""
    w_enc = torch.zeros(D_IN, D_SAE)
    for i in range(D_SAE):
        w_enc[(i + shift) % D_IN, i] = 1.0 if i < D_IN else -1.0
    cfg = SAEConfig(architecture="standard", d_in=D_IN, d_sae=D_SAE, hook_name=HOOK, layer=1,
                    apply_b_dec_to_input=False)
    sae = StandardSAE(cfg, {"W_enc": w_enc, "b_enc": torch.zeros(D_SAE),
                            "W_dec": w_enc.T.contiguous(), "b_dec": torch.zeros(D_IN)})
    save_saelens(sae, folder, model_name=model_name)
    (folder / "features.json").write_text(json.dumps({"features": [
        {"index": 3, "label": "unsafe code", "description": "shell injection, eval of input"},
        {"index": 5, "label": "legal advice", "tags": ["topic"]},
        {"index": 7, "label": "anger", "description": "hostile, angry tone"},
    ]}))
    return folder


def rows(*features: dict[int, float], width: int = D_IN) -> common_pb2.Tensor:
    """One row per dict {input dimension: value}, packed as float32."""
    data = np.zeros((len(features), width), dtype=np.float32)
    for r, values in enumerate(features):
        for dim, v in values.items():
            data[r, dim] = v
    return common_pb2.Tensor(dtype=common_pb2.DTYPE_FLOAT32, shape=list(data.shape),
                             data=data.tobytes())


class StreamDriver:
    """Sends messages one at a time on a Monitor.Stream and reads each reply."""

    def __init__(self, channel: grpc.Channel, metadata: tuple = ()) -> None:
        self._out: queue.Queue[monitor_pb2.MonitorMessage | None] = queue.Queue()
        self._replies = monitor_pb2_grpc.MonitorStub(channel).Stream(
            iter(self._out.get, None), metadata=metadata)
        self._lock = threading.Lock()

    def send(self, msg: monitor_pb2.MonitorMessage) -> monitor_pb2.MonitorReply:
        with self._lock:
            self._out.put(msg)
            return next(self._replies)

    def hello(self, d_model: int = D_IN, hook: str = HOOK) -> monitor_pb2.MonitorReply:
        return self.send(monitor_pb2.MonitorMessage(
            hello=monitor_pb2.Hello(client="test", model="tiny-test", hook_name=hook,
                                    d_model=d_model)))

    def step(self, **fields: object) -> monitor_pb2.MonitorReply:
        return self.send(monitor_pb2.MonitorMessage(step=monitor_pb2.StepBatch(**fields)))

    def close(self) -> None:
        self._out.put(None)
        for _ in self._replies:
            pass

    def __iter__(self) -> Iterator[monitor_pb2.MonitorReply]:
        return self._replies
