"""The trainable TopK SAE: forward with FVU and the AuxK dead-feature loss, decoder-norm care.

Notation follows Gao et al., "Scaling and evaluating sparse autoencoders" (2024):
``z = ReLU(TopK(W_enc (x - b_dec) + b_enc))``, ``x_hat = W_dec z + b_dec``. The decoder rows
are kept at unit norm: the gradient component parallel to each row is removed before a step
and the rows are renormalised after it. Tensors use the SAELens layout (``W_enc [d_in, d_sae]``,
``W_dec [d_sae, d_in]``) so the weights export as they are.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["ForwardOutput", "TopKTrainee", "auxk_loss"]


class ForwardOutput(NamedTuple):
    recon: Tensor
    """[n, d_in] reconstruction."""
    top_acts: Tensor
    """[n, k] activations of the selected features (ReLU applied, may hold zeros)."""
    top_indices: Tensor
    """[n, k] indices of the selected features."""
    fvu: Tensor
    """Fraction of variance unexplained of this batch (scalar, differentiable)."""
    auxk_loss: Tensor
    """AuxK loss, normalised like the FVU (0 when no feature is dead)."""


class TopKTrainee(nn.Module):
    """A TopK SAE as trainable parameters."""

    def __init__(self, d_in: int, d_sae: int, k: int, *, seed: int = 0) -> None:
        super().__init__()
        self.d_in, self.d_sae, self.k = d_in, d_sae, k
        gen = torch.Generator().manual_seed(seed)
        w_dec = torch.randn(d_sae, d_in, generator=gen)
        w_dec /= w_dec.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(w_dec)
        # Encoder initialised to the decoder's transpose (the paper's "tied init").
        self.W_enc = nn.Parameter(w_dec.T.contiguous())
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.b_dec = nn.Parameter(torch.zeros(d_in))

    def pre_acts(self, x: Tensor) -> Tensor:
        """[n, d_sae] encoder pre-activations (before TopK and ReLU)."""
        return torch.addmm(self.b_enc, x - self.b_dec, self.W_enc)

    def decode(self, acts: Tensor, indices: Tensor) -> Tensor:
        """``sum_j acts[:, j] * W_dec[indices[:, j]]`` without ``b_dec``: [n, d_in]."""
        return F.embedding_bag(indices, self.W_dec, per_sample_weights=acts, mode="sum")

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(activations [n, k], indices [n, k]) of the ``k`` selected features."""
        values, indices = self.pre_acts(x).topk(self.k, dim=-1, sorted=False)
        return values.relu(), indices

    def forward(
        self, x: Tensor, dead_mask: Tensor | None = None, k_aux: int | None = None
    ) -> ForwardOutput:
        xc = x - self.b_dec
        # The dense pre-activations only choose the features that take part; their values are
        # then gathered by `_SelectedPreActs`, whose backward is sparse. The dense encoder
        # gradient (xc^T @ dL/dpre, [d_in, d_sae]) cost more than the rest of a step, and all
        # but k (+ k_aux) entries of each row of dL/dpre are zero.
        with torch.no_grad():
            pre = torch.addmm(self.b_enc, xc, self.W_enc)
            indices = pre.topk(self.k, dim=-1, sorted=False).indices
            k_aux = k_aux or self.d_in // 2
            aux_indices = dead_topk(pre, dead_mask, k_aux)
            if aux_indices is not None:
                indices = torch.cat([indices, aux_indices], dim=1)
        selected: Tensor = _SelectedPreActs.apply(  # type: ignore[no-untyped-call]
            xc, self.W_enc, self.b_enc, indices, pre)
        acts, top_indices = selected[:, :self.k].relu(), indices[:, :self.k]
        recon = self.decode(acts, top_indices) + self.b_dec
        err = x - recon
        total_variance = (x - x.mean(0)).pow(2).sum().clamp_min(1e-12)
        fvu = err.pow(2).sum() / total_variance
        auxk = x.new_zeros(())
        if aux_indices is not None and dead_mask is not None:
            auxk = _auxk(self, selected[:, self.k:], aux_indices, err, int(dead_mask.sum()),
                         k_aux, total_variance)
        return ForwardOutput(recon, acts, top_indices, fvu, auxk)

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Rescale each decoder row to unit norm."""
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))

    @torch.no_grad()
    def remove_parallel_gradient(self) -> None:
        """Drop the part of ``W_dec.grad`` that would change the rows' norms (unit-norm rows)."""
        if self.W_dec.grad is None:
            return
        parallel = (self.W_dec.grad * self.W_dec).sum(dim=1, keepdim=True)
        self.W_dec.grad -= parallel * self.W_dec


class _SelectedPreActs(torch.autograd.Function):
    """``pre.gather(1, indices)`` for ``pre = b_enc + xc @ W_enc``, with a sparse backward.

    Forward reuses the dense ``pre`` (computed without a graph to choose ``indices``). Backward
    sends each selected entry's gradient only to its own encoder column and bias entry, and to
    ``xc`` through those columns: O(n * m * d_in) instead of O(n * d_sae * d_in) for m selected
    entries per row, equal to the dense gradient (the other entries' gradients are zero).
    """

    @staticmethod
    def forward(ctx: Any, xc: Tensor, w_enc: Tensor, b_enc: Tensor, indices: Tensor,
                pre: Tensor) -> Tensor:
        ctx.save_for_backward(xc, w_enc, indices)
        ctx.d_sae = b_enc.shape[0]
        return pre.gather(1, indices)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        xc, w_enc, indices = ctx.saved_tensors
        n, m = indices.shape
        flat_idx, flat_grad = indices.flatten(), grad.flatten()
        grad_xc = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_xc = F.embedding_bag(indices, w_enc.t().contiguous(), per_sample_weights=grad,
                                      mode="sum")
        if ctx.needs_input_grad[1]:
            rows = torch.arange(n, device=xc.device).repeat_interleave(m)
            sparse = torch.sparse_coo_tensor(torch.stack([flat_idx, rows]), flat_grad,
                                             (ctx.d_sae, n), check_invariants=False)
            grad_w = torch.sparse.mm(sparse, xc).t()
        if ctx.needs_input_grad[2]:
            grad_b = grad.new_zeros(ctx.d_sae).index_add_(0, flat_idx, flat_grad)
        return grad_xc, grad_w, grad_b, None, None


def dead_topk(pre: Tensor, dead_mask: Tensor | None, k_aux: int) -> Tensor | None:
    """Indices ``[n, min(k_aux, num_dead)]`` of each row's largest dead pre-activations, or
    None when no feature is dead (AuxK's selection)."""
    num_dead = int(dead_mask.sum()) if dead_mask is not None else 0
    if dead_mask is None or num_dead == 0:
        return None
    dead_pre = torch.where(dead_mask[None], pre, torch.finfo(pre.dtype).min)
    return dead_pre.topk(min(k_aux, num_dead), dim=-1, sorted=False).indices


def _auxk(sae: TopKTrainee, values: Tensor, indices: Tensor, err: Tensor, num_dead: int,
          k_aux: int, total_variance: Tensor) -> Tensor:
    """AuxK's loss from the selected dead pre-activations ``values`` (see :func:`auxk_loss`)."""
    e_hat = sae.decode(values.relu(), indices)
    return min(num_dead / k_aux, 1.0) * (e_hat - err.detach()).pow(2).sum() / total_variance


def auxk_loss(
    sae: TopKTrainee,
    pre: Tensor,
    err: Tensor,
    dead_mask: Tensor | None,
    k_aux: int,
    total_variance: Tensor,
) -> Tensor:
    """AuxK: the top ``k_aux`` dead features must reconstruct the main reconstruction's error.

    ``e_hat = W_dec z_aux`` (no ``b_dec``, as in the paper), loss ``||e - e_hat||^2`` over the
    batch's total variance, scaled down by ``num_dead / k_aux`` when fewer features are dead
    than ``k_aux`` (sparsify). The error is detached: only the dead features learn from it.
    """
    indices = dead_topk(pre, dead_mask, k_aux)
    if indices is None or dead_mask is None:
        return pre.new_zeros(())
    return _auxk(sae, pre.gather(1, indices), indices, err, int(dead_mask.sum()), k_aux,
                 total_variance)
