import threading

import numpy as np
import pytest
import torch
from saehelpers import D_IN, D_SAE, K, make_sae, reference_encode, rows

from latentguard.monitors.errors import SAEFormatError, ShapeError, UnknownFeatureError
from latentguard.monitors.sae import (
    SAE,
    SAEConfig,
    StandardSAE,
    architecture_class,
    architectures,
    register_architecture,
)

ARCHS = architectures()


def test_the_four_architectures_are_registered():
    assert set(ARCHS) >= {"standard", "topk", "jumprelu", "gated"}
    for key in ARCHS:
        assert architecture_class(key).architecture == key


def test_duplicate_architecture_key_raises():
    class Again(SAE):
        architecture = "standard"

    with pytest.raises(ValueError, match="already registered"):
        register_architecture(Again)


def test_unknown_architecture_lists_valid_keys():
    with pytest.raises(SAEFormatError) as info:
        architecture_class("sparse-magic")
    for key in ARCHS:
        assert key in str(info.value)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("norm", ["none", "constant_norm_rescale", "layer_norm"])
def test_encode_matches_numpy_reference(arch, norm):
    sae, arrays = make_sae(arch, normalize_activations=norm)
    x = rows()
    got = sae.encode(torch.from_numpy(x)).numpy()
    want = reference_encode(arch, arrays, x, norm=norm)
    assert got.shape == (x.shape[0], D_SAE)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert (want > 0).any(), "fixture should activate some features"


@pytest.mark.parametrize("arch", ARCHS)
def test_encode_without_b_dec_subtraction(arch):
    sae, arrays = make_sae(arch, apply_b_dec_to_input=False)
    x = rows(seed=5)
    want = reference_encode(arch, arrays, x, apply_b_dec=False)
    np.testing.assert_allclose(sae.encode(torch.from_numpy(x)).numpy(), want, rtol=1e-4, atol=1e-5)


def test_topk_keeps_at_most_k_features():
    sae, _ = make_sae("topk")
    acts = sae.encode(torch.from_numpy(rows(n=30)))
    assert int((acts > 0).sum(dim=1).max()) <= K


@pytest.mark.parametrize("arch", ARCHS)
def test_decode_matches_reference(arch):
    sae, arrays = make_sae(arch)
    f = np.abs(np.random.default_rng(3).normal(size=(4, D_SAE))).astype(np.float32)
    got = sae.decode(torch.from_numpy(f)).numpy()
    np.testing.assert_allclose(got, f @ arrays["W_dec"] + arrays["b_dec"], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("norm", ["constant_norm_rescale", "layer_norm"])
def test_decode_undoes_runtime_normalisation(norm):
    sae, arrays = make_sae("standard", normalize_activations=norm)
    x = torch.from_numpy(rows(n=3))
    with pytest.raises(ShapeError):
        sae.decode(torch.zeros(3, D_SAE))
    out = sae.decode(torch.zeros(3, D_SAE), x).numpy()
    xn = x.numpy().astype(np.float64)
    if norm == "layer_norm":
        std = xn.std(axis=1, ddof=1, keepdims=True)
        want = arrays["b_dec"] * std + xn.mean(axis=1, keepdims=True)
    else:
        want = arrays["b_dec"] * np.linalg.norm(xn, axis=1, keepdims=True) / np.sqrt(D_IN)
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_encode_for_monitor_agrees_with_encode_and_topk(arch):
    sae, _ = make_sae(arch)
    x = torch.from_numpy(rows(n=9))
    idx = torch.tensor([0, 7, 63, 7])
    enc = sae.encode_for_monitor(x, idx, k=4)
    acts = sae.encode(x)
    torch.testing.assert_close(enc.selected, acts[:, idx])
    assert enc.topk_indices.dtype == torch.int64 and enc.topk_values.shape == (9, 4)
    torch.testing.assert_close(enc.topk_values, acts.gather(1, enc.topk_indices))
    # descending and truly the largest: the k-th value is >= every other activation
    assert (enc.topk_values[:, :-1] >= enc.topk_values[:, 1:]).all()
    kth = enc.topk_values[:, -1:]
    mask = torch.ones_like(acts, dtype=torch.bool).scatter_(1, enc.topk_indices, False)
    assert (acts[mask].view(9, -1) <= kth).all()
    values, indices = sae.topk(x, 4)
    torch.testing.assert_close(values, enc.topk_values)


@pytest.mark.parametrize("arch", ARCHS)
def test_bf16_input_and_bf16_sae(arch):
    sae, arrays = make_sae(arch)
    x = torch.from_numpy(rows())
    fp32 = sae.encode(x)
    torch.testing.assert_close(sae.encode(x.to(torch.bfloat16)), fp32, rtol=0.05, atol=0.05)
    sae16 = sae.to(torch.bfloat16)
    assert sae16.dtype == torch.bfloat16 and sae.dtype == torch.float32
    out = sae16.encode(x)
    assert out.dtype == torch.bfloat16 and out.shape == fp32.shape


def test_input_checks():
    sae, _ = make_sae("standard")
    with pytest.raises(ShapeError, match="activations"):
        sae.encode(torch.zeros(3, D_IN + 1))
    with pytest.raises(ShapeError):
        sae.encode(torch.zeros(D_IN))
    with pytest.raises(ShapeError):
        sae.encode(torch.zeros(2, D_IN, dtype=torch.int64))
    with pytest.raises(ShapeError):
        sae.encode(np.zeros((2, D_IN)))
    with pytest.raises(UnknownFeatureError):
        sae.encode_for_monitor(torch.zeros(1, D_IN), torch.tensor([D_SAE]), 2)
    with pytest.raises(UnknownFeatureError):
        sae.encode_for_monitor(torch.zeros(1, D_IN), torch.tensor([-1]), 2)
    with pytest.raises(ShapeError):
        sae.encode_for_monitor(torch.zeros(1, D_IN), torch.tensor([0.5]), 2)
    with pytest.raises(ShapeError):
        sae.topk(torch.zeros(1, D_IN), 0)
    assert sae.encode(torch.zeros(0, D_IN)).shape == (0, D_SAE)


def test_constructor_checks_tensors():
    sae, arrays = make_sae("jumprelu")
    tensors = {k: torch.from_numpy(v) for k, v in arrays.items()}
    missing = dict(tensors)
    del missing["threshold"]
    with pytest.raises(SAEFormatError) as info:
        architecture_class("jumprelu")(sae.cfg, missing, source="x.safetensors")
    assert info.value.key == "threshold" and "x.safetensors" in str(info.value)
    bad = dict(tensors, W_dec=torch.zeros(D_SAE, D_IN + 1))
    with pytest.raises(SAEFormatError, match="W_dec"):
        architecture_class("jumprelu")(sae.cfg, bad)
    with pytest.raises(SAEFormatError):
        StandardSAE(sae.cfg, tensors)  # architecture mismatch


def test_topk_needs_k():
    _, arrays = make_sae("topk")
    cfg = SAEConfig(architecture="topk", d_in=D_IN, d_sae=D_SAE, hook_name="layers.1", layer=1)
    with pytest.raises(SAEFormatError, match="k"):
        architecture_class("topk")(cfg, {k: torch.from_numpy(v) for k, v in arrays.items()})


@pytest.mark.parametrize("arch", ARCHS)
def test_encode_is_thread_safe(arch):
    sae, _ = make_sae(arch)
    inputs = [torch.from_numpy(rows(n=20, seed=s)) for s in range(8)]
    expected = [sae.encode(x) for x in inputs]
    results: dict[int, torch.Tensor] = {}

    def work(i: int) -> None:
        for _ in range(20):
            results[i] = sae.encode(inputs[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, want in enumerate(expected):
        torch.testing.assert_close(results[i], want)


@pytest.mark.parametrize("k", [1, K, K + 3])
def test_topk_sparse_monitor_path_matches_dense(k):
    sae, _ = make_sae("topk")
    x = torch.from_numpy(rows(n=7, seed=9))
    idx = torch.arange(D_SAE)
    enc = sae.encode_for_monitor(x, idx, k)
    acts = sae.encode(x)
    torch.testing.assert_close(enc.selected, acts)
    torch.testing.assert_close(enc.topk_values, acts.topk(k, dim=-1).values)
