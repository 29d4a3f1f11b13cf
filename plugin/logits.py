"""The V1 logits processor that applies block verdicts: a blocked request's next token is EOS.

Register it with `--logits-processors latentguard.plugin.logits:LatentguardLogitsProcessor`
(`LLM(..., logits_processors=[LatentguardLogitsProcessor])` offline). It runs in the worker after
the forward of the same step, so in sync mode not one token is sampled after a block trigger.
"""

from __future__ import annotations

from typing import Any

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor

from latentguard.plugin._capture import Capture


class LatentguardLogitsProcessor(LogitsProcessor):
    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool) -> None:
        eos = vllm_config.model_config.hf_text_config.eos_token_id
        self.eos = eos[0] if isinstance(eos, list) else eos

    def is_argmax_invariant(self) -> bool:
        return False

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        return None

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        capture = Capture.instance
        if capture is None or self.eos is None:
            return logits
        for row in capture.rows_to_block():
            if row < logits.shape[0]:
                logits[row] = float("-inf")
                logits[row, self.eos] = 0.0
        return logits
