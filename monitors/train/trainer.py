"""One TopK SAE under training: Adam, learning-rate schedule, dead-feature tracking, state, export.

Inputs are scaled by one constant so that the mean row norm is ``sqrt(d_in)`` (SAELens'
``expected_average_only_in``), which makes the default learning rate suit any model's residual
scale. The constant is folded into the exported weights, so the saved SAE reads raw rows and its
activations are in the rows' own units.
"""

from __future__ import annotations

import logging
import math
from typing import Any, NamedTuple

import torch
from torch import Tensor

from latentguard.monitors.sae import SAEConfig, TopKSAE
from latentguard.monitors.train.config import TrainerConfig
from latentguard.monitors.train.topk import TopKTrainee

__all__ = ["SAETrainer", "StepStats"]

logger = logging.getLogger(__name__)


class StepStats(NamedTuple):
    fvu: float
    """Batch fraction of variance unexplained (before the step's update)."""
    auxk_loss: float
    """Batch AuxK loss."""
    l0: float
    """Mean non-zero activations per row."""
    dead_fraction: float
    """Features that have not fired within the dead window (see ``dead_fraction``)."""
    lr: float
    """Learning rate used for the step."""


class SAETrainer:
    """Trains a :class:`TopKTrainee` on batches of raw residual rows ``[batch_size, d_in]``."""

    def __init__(self, cfg: TrainerConfig, d_in: int, total_steps: int) -> None:
        if total_steps <= 0:
            raise ValueError(f"total_steps: must be positive, got {total_steps}")
        self.cfg, self.d_in, self.total_steps = cfg, d_in, total_steps
        self.sae = TopKTrainee(d_in, cfg.d_sae, cfg.k, seed=cfg.init_seed)
        self.optimizer = torch.optim.Adam(self.sae.parameters(), lr=cfg.learning_rate())
        self.step = 0
        self.tokens_seen = 0
        self.scale = 1.0
        """Input scaling factor (set by :meth:`initialize`)."""
        self.initialized = False
        self.tokens_since_fired = torch.zeros(cfg.d_sae, dtype=torch.int64)

    @torch.no_grad()
    def initialize(self, sample: Tensor) -> None:
        """Set the input scale and ``b_dec`` (the mean row) from a sample of raw rows."""
        sample = sample.detach().float()
        self.scale = math.sqrt(self.d_in) / float(sample.norm(dim=1).mean().clamp_min(1e-12))
        self.sae.b_dec.copy_(sample.mean(dim=0) * self.scale)
        self.initialized = True
        logger.info("input scale %.4g (mean row norm %.4g)", self.scale, math.sqrt(self.d_in)
                    / self.scale)

    def lr_at(self, step: int) -> float:
        """Linear warm-up, constant, then linear decay to zero over the final fraction."""
        base = self.cfg.learning_rate()
        warmup = min(self.cfg.lr_warmup_steps, self.total_steps // 10)
        if step < warmup:
            return base * (step + 1) / warmup
        decay = int(self.total_steps * self.cfg.lr_decay_fraction)
        left = self.total_steps - step
        return base * min(1.0, left / decay) if decay > 0 else base

    def dead_mask(self) -> Tensor:
        """Features that have not fired in the last ``dead_after_tokens`` training tokens."""
        return self.tokens_since_fired >= self.cfg.dead_after_tokens

    def dead_fraction(self) -> float:
        """Fraction of features silent for the dead window, or for the whole run when shorter."""
        window = min(self.cfg.dead_after_tokens, self.tokens_seen)
        if window == 0:
            return 0.0
        return float((self.tokens_since_fired >= window).float().mean())

    def train_step(self, x: Tensor) -> StepStats:
        """One optimiser step on raw rows ``x``; initialises from ``x`` on the first call."""
        if not self.initialized:
            self.initialize(x)
        lr = self.lr_at(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        dead = self.dead_mask() if self.cfg.auxk_alpha > 0 else None
        out = self.sae(x.detach().float() * self.scale, dead, self.cfg.k_aux)
        loss = out.fvu + self.cfg.auxk_alpha * out.auxk_loss
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.sae.remove_parallel_gradient()
        self.optimizer.step()
        self.sae.normalize_decoder()
        with torch.no_grad():
            fired = torch.zeros_like(self.tokens_since_fired, dtype=torch.bool)
            fired[out.top_indices[out.top_acts > 0]] = True
            self.tokens_since_fired += x.shape[0]
            self.tokens_since_fired[fired] = 0
        self.step += 1
        self.tokens_seen += x.shape[0]
        return StepStats(
            fvu=float(out.fvu.detach()), auxk_loss=float(out.auxk_loss.detach()),
            l0=float((out.top_acts > 0).sum(dim=1).float().mean()),
            dead_fraction=self.dead_fraction(), lr=lr,
        )

    # ------------------------------------------------------------------------- state
    def state_tensors(self) -> dict[str, Tensor]:
        """Everything needed to resume, as named tensors (for safetensors)."""
        out = {f"sae.{k}": v.detach().contiguous().clone()
               for k, v in self.sae.state_dict().items()}
        names = dict(enumerate(n for n, _ in self.sae.named_parameters()))
        for idx, state in self.optimizer.state_dict()["state"].items():
            for key, value in state.items():
                out[f"adam.{names[idx]}.{key}"] = torch.as_tensor(value).contiguous().clone()
        out["tokens_since_fired"] = self.tokens_since_fired.clone()
        return out

    def state_meta(self) -> dict[str, Any]:
        """The JSON part of the state."""
        return {"step": self.step, "tokens_seen": self.tokens_seen, "scale": self.scale,
                "initialized": self.initialized}

    def load_state(self, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
        """Restore what :meth:`state_tensors` and :meth:`state_meta` returned."""
        self.sae.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("sae.")})
        opt = self.optimizer.state_dict()
        state: dict[int, dict[str, Tensor]] = {}
        for idx, name in enumerate(n for n, _ in self.sae.named_parameters()):
            prefix = f"adam.{name}."
            entry = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            if entry:
                state[idx] = entry
        opt["state"] = state
        self.optimizer.load_state_dict(opt)
        self.tokens_since_fired = tensors["tokens_since_fired"].clone()
        self.step, self.tokens_seen = int(meta["step"]), int(meta["tokens_seen"])
        self.scale = float(meta["scale"])
        self.initialized = bool(meta["initialized"])

    # ------------------------------------------------------------------------- export
    @torch.no_grad()
    def export(self, *, hook_name: str, layer: int, model_name: str = "") -> TopKSAE:
        """The inference SAE for raw rows (input scale folded into the biases)."""
        cfg = SAEConfig(
            architecture="topk", d_in=self.d_in, d_sae=self.cfg.d_sae, hook_name=hook_name,
            layer=layer, k=self.cfg.k, apply_b_dec_to_input=True, model_name=model_name,
        )
        s = self.scale
        tensors = {
            "W_enc": self.sae.W_enc.detach().clone(),
            "b_enc": self.sae.b_enc.detach() / s,
            "W_dec": self.sae.W_dec.detach().clone(),
            "b_dec": self.sae.b_dec.detach() / s,
        }
        return TopKSAE(cfg, tensors, source="<trainer>")
