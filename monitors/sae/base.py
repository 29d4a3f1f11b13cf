"""The SAE base class: input checks, normalisation, the encode/decode pipeline, top-k.

Subclasses (one file per architecture) declare their key, the tensors they need with their
shapes, and ``_activate`` (pre-processed input -> feature activations). Encoding is plain
batched torch: one matmul per batch, no Python loop per token, and no mutable state, so one
SAE can be used from several threads at once.
"""

from __future__ import annotations

import logging
import math
from typing import ClassVar, NamedTuple

import torch
from torch import Tensor

from latentguard.monitors.errors import SAEFormatError, ShapeError, UnknownFeatureError
from latentguard.monitors.sae.config import SAEConfig
from latentguard.monitors.sae.identity import HASH_CHARS, SAEIdentity, weights_sha256

__all__ = ["SAE", "MonitorEncoding"]

logger = logging.getLogger(__name__)

_LN_EPS = 1e-5


class MonitorEncoding(NamedTuple):
    """What the monitor needs from one encode of a batch of rows."""

    selected: Tensor
    """[n, len(feature_idx)] activations of the features the rules read."""
    topk_values: Tensor
    """[n, k] largest activations per row, descending (may contain zeros)."""
    topk_indices: Tensor
    """[n, k] feature indices of ``topk_values`` (int64)."""


class SAE:
    """A loaded sparse autoencoder (inference only).

    ``W_enc`` is ``[d_in, d_sae]``, ``W_dec`` is ``[d_sae, d_in]`` (SAELens layout) whatever the
    on-disk format was.
    """

    architecture: ClassVar[str] = ""
    """Registry key; set by each architecture module."""
    tensor_shapes: ClassVar[dict[str, tuple[str, ...]]] = {
        "W_enc": ("d_in", "d_sae"),
        "b_enc": ("d_sae",),
        "W_dec": ("d_sae", "d_in"),
        "b_dec": ("d_in",),
    }
    """Required tensors and their shapes in terms of ``d_in`` / ``d_sae``."""

    def __init__(self, cfg: SAEConfig, tensors: dict[str, Tensor], *, source: str = "<memory>",
                 identity: SAEIdentity | None = None):
        if cfg.architecture != self.architecture:
            raise SAEFormatError(
                source, f"config architecture {cfg.architecture!r} given to {type(self).__name__}"
            )
        self.cfg = cfg
        self.source = source
        self._identity = identity
        dims = {"d_in": cfg.d_in, "d_sae": cfg.d_sae}
        self._tensors: dict[str, Tensor] = {}
        dtype = tensors["W_dec"].dtype if "W_dec" in tensors else None
        for key, spec in self.tensor_shapes.items():
            if key not in tensors:
                raise SAEFormatError(source, f"missing tensor for {self.architecture} SAE", key=key)
            t = tensors[key]
            want = tuple(dims[s] for s in spec)
            if tuple(t.shape) != want:
                raise SAEFormatError(
                    source, f"shape {tuple(t.shape)} does not match expected {want}", key=key
                )
            if not t.is_floating_point():
                raise SAEFormatError(source, f"dtype {t.dtype} is not floating point", key=key)
            self._tensors[key] = t.detach().to(dtype).contiguous()
        extra = sorted(set(tensors) - set(self.tensor_shapes))
        if extra:
            logger.debug("%s: ignoring tensors %s", source, extra)
        self._check_config()
        self._prepare()

    # ----------------------------------------------------------------- attributes
    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    @property
    def hook_name(self) -> str:
        return self.cfg.hook_name

    @property
    def layer(self) -> int:
        return self.cfg.layer

    @property
    def identity(self) -> SAEIdentity:
        """Which SAE this is: the hash of its weights as read from disk (`load_sae` computes
        it before converting the dtype), with its name and hook; for an SAE built in memory,
        the hash of its tensors, computed on first use."""
        if self._identity is None:
            self._identity = SAEIdentity(
                name=self.cfg.model_name[:128], hook=self.hook_name[:128],
                sha256=weights_sha256(self._tensors)[:HASH_CHARS])
        return self._identity

    @property
    def dtype(self) -> torch.dtype:
        return self._tensors["W_dec"].dtype

    @property
    def device(self) -> torch.device:
        return self._tensors["W_dec"].device

    @property
    def W_enc(self) -> Tensor:
        return self._tensors["W_enc"]

    @property
    def W_dec(self) -> Tensor:
        return self._tensors["W_dec"]

    @property
    def b_dec(self) -> Tensor:
        return self._tensors["b_dec"]

    def state_dict(self) -> dict[str, Tensor]:
        """The SAE's tensors under their SAELens names (shared, do not modify)."""
        return dict(self._tensors)

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> SAE:
        """A copy with tensors converted (the original is unchanged); the same SAE, so the
        same identity."""
        tensors = {k: v.to(dtype=dtype, device=device) for k, v in self._tensors.items()}
        return type(self)(self.cfg, tensors, source=self.source, identity=self.identity)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(d_in={self.d_in}, d_sae={self.d_sae}, "
            f"hook={self.hook_name!r}, layer={self.layer}, dtype={self.dtype})"
        )

    # ----------------------------------------------------------------- hooks for subclasses
    def _check_config(self) -> None:
        """Raise SAEFormatError when the config does not suit the architecture."""

    def _prepare(self) -> None:
        """Precompute derived tensors (called once at construction)."""

    def _activate(self, sae_in: Tensor) -> Tensor:
        """Pre-processed input [n, d_in] -> feature activations [n, d_sae]."""
        raise NotImplementedError

    def _pre(self, sae_in: Tensor, bias: str = "b_enc") -> Tensor:
        """``sae_in @ W_enc + bias`` as one fused matmul."""
        return torch.addmm(self._tensors[bias], sae_in, self._tensors["W_enc"])

    # ----------------------------------------------------------------- public API
    def check_rows(self, x: Tensor, field: str = "activations") -> Tensor:
        """Validate a batch of rows and cast it to the SAE's dtype and device."""
        if not isinstance(x, Tensor):
            raise ShapeError(field, f"expected a torch.Tensor, got {type(x).__name__}")
        if x.ndim != 2 or x.shape[1] != self.d_in:
            raise ShapeError(field, f"expected shape [n, {self.d_in}], got {list(x.shape)}")
        if not x.is_floating_point():
            raise ShapeError(field, f"expected a floating point dtype, got {x.dtype}")
        return x.to(dtype=self.dtype, device=self.device)

    def process_input(self, x: Tensor) -> Tensor:
        """Normalise (per config) and centre the rows: the tensor the encoder matmul reads."""
        x = self.check_rows(x)
        norm = self.cfg.normalize_activations
        if norm == "constant_norm_rescale":
            x = x * (math.sqrt(self.d_in) / x.norm(dim=-1, keepdim=True).clamp_min(1e-12))
        elif norm == "layer_norm":
            x = x - x.mean(dim=-1, keepdim=True)
            x = x / (x.std(dim=-1, keepdim=True) + _LN_EPS)
        if self.cfg.apply_b_dec_to_input:
            x = x - self.b_dec
        return x

    @torch.inference_mode()
    def encode(self, x: Tensor) -> Tensor:
        """Feature activations ``[n, d_sae]`` of rows ``x`` ``[n, d_in]`` (fp32 or bf16)."""
        return self._activate(self.process_input(x))

    def output_scale(self, x: Tensor) -> Tensor:
        """[n, 1] factor mapping decoder-space vectors back to the rows' scale.

        1 unless the SAE normalises its input at run time (constant_norm_rescale, layer_norm).
        """
        x = self.check_rows(x)
        norm = self.cfg.normalize_activations
        scale: Tensor
        if norm == "constant_norm_rescale":
            scale = x.norm(dim=-1, keepdim=True) / math.sqrt(self.d_in)
            return scale
        if norm == "layer_norm":
            scale = x.std(dim=-1, keepdim=True)
            return scale
        return torch.ones(x.shape[0], 1, dtype=self.dtype, device=self.device)

    @torch.inference_mode()
    def decode(self, f: Tensor, x: Tensor | None = None) -> Tensor:
        """Reconstruction ``[n, d_in]`` from activations ``f`` ``[n, d_sae]``.

        SAEs that normalise their input at run time need the original rows ``x`` to undo it.
        """
        if f.ndim != 2 or f.shape[1] != self.d_sae:
            raise ShapeError("features", f"expected shape [n, {self.d_sae}], got {list(f.shape)}")
        out = torch.addmm(self.b_dec, f.to(self.dtype), self.W_dec)
        norm = self.cfg.normalize_activations
        if norm in ("constant_norm_rescale", "layer_norm"):
            if x is None:
                raise ShapeError("x", f"decode of a {norm} SAE needs the original rows")
            x = self.check_rows(x, "x")
            if norm == "layer_norm":
                return out * x.std(dim=-1, keepdim=True) + x.mean(dim=-1, keepdim=True)
            return out * self.output_scale(x)
        return out

    def check_k(self, k: int) -> None:
        if not 1 <= k <= self.d_sae:
            raise ShapeError("k", f"must be between 1 and d_sae={self.d_sae}, got {k}")

    def check_features(self, feature_idx: Tensor) -> Tensor:
        """Validate feature indices (1-D, integer, < d_sae) and return them as int64."""
        idx = torch.as_tensor(feature_idx)
        if idx.ndim != 1 or idx.is_floating_point() or idx.is_complex() or idx.dtype == torch.bool:
            raise ShapeError("feature_idx", f"expected a 1-D integer tensor, got {idx.dtype}")
        idx = idx.to(dtype=torch.int64, device=self.device)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.d_sae):
            bad = idx[(idx < 0) | (idx >= self.d_sae)][0]
            raise UnknownFeatureError(f"feature {int(bad)} out of range 0..{self.d_sae - 1}")
        return idx

    @torch.inference_mode()
    def topk(self, x: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """Top-``k`` activations per row: (values [n, k] descending, indices [n, k] int64)."""
        self.check_k(k)
        return self.encode(x).topk(k, dim=-1, sorted=True)

    @torch.inference_mode()
    def encode_for_monitor(self, x: Tensor, feature_idx: Tensor, k: int) -> MonitorEncoding:
        """One encode giving the rule features' activations and the per-row top-k for traces."""
        idx = self.check_features(feature_idx)
        self.check_k(k)
        acts = self.encode(x)
        values, indices = acts.topk(k, dim=-1, sorted=True)
        return MonitorEncoding(acts.index_select(1, idx), values, indices)
