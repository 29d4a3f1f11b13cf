"""Steering math on residual-stream rows, given an SAE.

* ``add``:    h' = h + sum_i s_i * d_i
* ``clamp``:  h' = h + sum_i (c_i - f_i(h)) * d_i   (the SAE error term h - dec(f(h)) is kept)
* ``ablate``: clamp to 0

where ``d_i`` is feature i's decoder row (times the SAE's output scale for SAEs that normalise
their input at run time) and ``f_i(h)`` its current activation. With ``preserve_norm`` each
row is rescaled to its original L2 norm afterwards.

When re-encoding gives back ``c``: clamping moves the row by ``(c - f_i) * d_i``; re-encoding
shifts feature i's pre-activation by ``(c - f_i) * <W_enc[:, i], d_i>`` and every other
feature j by ``(c - f_i) * <W_enc[:, j], d_i>``. So ``f_i(h') == c`` exactly when the encoder
column and decoder row are dual (``<W_enc[:, i], d_i> = 1``, e.g. tied weights with unit-norm
rows), the decoder rows of the steered features do not leak into each other's encoder columns,
and the activation function is the identity around ``c``: a standard (ReLU) SAE with the
feature active, or ``c > 0``. It does *not* hold for a topk SAE when ``c`` is too small to stay
in the top k (re-encoding gives 0), for a jumprelu SAE when ``c`` is at or below the feature's
threshold (0), or for a gated SAE when the gate closes. The edit itself is still exactly the
formula above; only the read-back differs. tests/monitors/test_steering.py shows both cases.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from latentguard.monitors.errors import ShapeError
from latentguard.monitors.rules.schema import Steer, SteerFeature
from latentguard.monitors.sae.base import SAE

__all__ = ["apply_steer", "steer_delta"]


def _split(features: Sequence[SteerFeature], sae: SAE) -> tuple[Tensor, Tensor]:
    idx = sae.check_features(torch.tensor([f.feature for f in features], dtype=torch.int64))
    values = torch.tensor([f.value for f in features], dtype=sae.dtype, device=sae.device)
    return idx, values


@torch.inference_mode()
def steer_delta(
    h: Tensor, sae: SAE, steer: Steer, current: Tensor | None = None
) -> Tensor:
    """The change ``h' - h`` ``[n, d_in]`` that ``steer`` makes to rows ``h`` ``[n, d_in]``.

    ``current`` (``[n, len(steer.features)]``) are the features' activations of ``h`` if the
    caller already has them (clamp / ablate); otherwise ``h`` is encoded.
    """
    h = sae.check_rows(h, "h")
    idx, values = _split(steer.features, sae)
    if steer.mode == "ablate":
        values = torch.zeros_like(values)
    if steer.mode == "add":
        coeff = values.expand(h.shape[0], -1)
    else:
        if current is None:
            current = sae.encode(h).index_select(1, idx)
        elif tuple(current.shape) != (h.shape[0], idx.numel()):
            want = [h.shape[0], idx.numel()]
            raise ShapeError("current", f"expected shape {want}, got {list(current.shape)}")
        coeff = values - current.to(h.dtype)
    delta = coeff @ sae.W_dec.index_select(0, idx)
    if sae.cfg.normalize_activations in ("constant_norm_rescale", "layer_norm"):
        delta = delta * sae.output_scale(h)
    return delta


@torch.inference_mode()
def apply_steer(
    h: Tensor, sae: SAE, steer: Steer, current: Tensor | None = None
) -> Tensor:
    """Steered copy of rows ``h`` (``h`` itself is not modified)."""
    rows = sae.check_rows(h, "h")
    out = rows + steer_delta(rows, sae, steer, current)
    if steer.preserve_norm:
        before = rows.norm(dim=-1, keepdim=True)
        after = out.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(out.dtype).tiny)
        out = out * (before / after)
    return out.to(h.dtype)
