"""Tiny SAEs per architecture and independent numpy references (test helpers)."""

from __future__ import annotations

import numpy as np
import torch

from latentguard.monitors.sae import SAE, SAEConfig, architecture_class

D_IN, D_SAE, K = 16, 64, 5


def random_tensors(arch: str, rng: np.random.Generator, d_in: int = D_IN, d_sae: int = D_SAE):
    t = {
        "W_enc": (rng.normal(size=(d_in, d_sae)) / np.sqrt(d_in)).astype(np.float32),
        "W_dec": (rng.normal(size=(d_sae, d_in)) / np.sqrt(d_sae)).astype(np.float32),
        "b_dec": rng.normal(size=(d_in,)).astype(np.float32) * 0.1,
    }
    if arch == "gated":
        t["b_gate"] = rng.normal(size=(d_sae,)).astype(np.float32) * 0.3
        t["b_mag"] = rng.normal(size=(d_sae,)).astype(np.float32) * 0.3
        t["r_mag"] = rng.normal(size=(d_sae,)).astype(np.float32) * 0.2
    else:
        t["b_enc"] = rng.normal(size=(d_sae,)).astype(np.float32) * 0.3
    if arch == "jumprelu":
        t["threshold"] = rng.uniform(0.0, 0.5, size=(d_sae,)).astype(np.float32)
    return t


def make_sae(arch: str, seed: int = 0, **cfg_kw) -> tuple[SAE, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    arrays = random_tensors(arch, rng)
    cfg = SAEConfig(
        architecture=arch,
        d_in=D_IN,
        d_sae=D_SAE,
        hook_name="blocks.3.hook_resid_post",
        layer=3,
        k=K if arch == "topk" else None,
        **cfg_kw,
    )
    tensors = {k: torch.from_numpy(v) for k, v in arrays.items()}
    return architecture_class(arch)(cfg, tensors), arrays


def np_relu(x):
    return np.maximum(x, 0.0)


def np_topk_dense(pre, k):
    """Keep the k largest entries per row (then ReLU), zero elsewhere."""
    out = np.zeros_like(pre)
    idx = np.argsort(-pre, axis=1, kind="stable")[:, :k]
    rows = np.arange(pre.shape[0])[:, None]
    out[rows, idx] = np_relu(pre[rows, idx])
    return out


def reference_encode(arch: str, a: dict[str, np.ndarray], x: np.ndarray, *,
                     apply_b_dec: bool = True, k: int = K, norm: str = "none") -> np.ndarray:
    """SAELens semantics, written independently in float64 numpy."""
    x = x.astype(np.float64)
    a = {key: v.astype(np.float64) for key, v in a.items()}
    if norm == "constant_norm_rescale":
        x = x * np.sqrt(x.shape[1]) / np.linalg.norm(x, axis=1, keepdims=True)
    elif norm == "layer_norm":
        x = x - x.mean(axis=1, keepdims=True)
        x = x / (x.std(axis=1, ddof=1, keepdims=True) + 1e-5)
    if apply_b_dec:
        x = x - a["b_dec"]
    if arch == "gated":
        gate = (x @ a["W_enc"] + a["b_gate"]) > 0
        mag = np_relu(x @ (a["W_enc"] * np.exp(a["r_mag"])) + a["b_mag"])
        return gate * mag
    pre = x @ a["W_enc"] + a["b_enc"]
    if arch == "standard":
        return np_relu(pre)
    if arch == "topk":
        return np_topk_dense(pre, k)
    if arch == "jumprelu":
        return np_relu(pre) * (pre > a["threshold"])
    raise ValueError(arch)


def rows(n: int = 12, seed: int = 1, d_in: int = D_IN) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d_in)).astype(np.float32) * 2.0
