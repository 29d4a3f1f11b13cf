"""Each on-disk format, written here with its real key names, loads and encodes like a
reference computed in numpy from the raw on-disk arrays."""

import json

import numpy as np
import pytest
import torch
from saehelpers import (
    D_IN,
    D_SAE,
    K,
    np_relu,
    np_topk_dense,
    random_tensors,
    reference_encode,
    rows,
)
from safetensors.numpy import save_file

from latentguard.monitors.errors import SAEFormatError
from latentguard.monitors.sae import architectures, format_names, get_format, load_sae, save_saelens

RNG = np.random.default_rng


def _close(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- writers (real key names)
def write_saelens(path, arch, arrays, *, style="v6", norm="none", apply_b_dec=True):
    path.mkdir(parents=True)
    cfg = {
        "architecture": arch,
        "d_in": D_IN,
        "d_sae": D_SAE,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": apply_b_dec,
        "normalize_activations": norm,
    }
    if arch == "topk":
        cfg["k"] = K
    if style == "v6":
        cfg["metadata"] = {"hook_name": "blocks.6.hook_resid_post", "sae_lens_version": "6.5.0",
                           "model_name": "gemma-3-270m"}
    elif style == "meta":
        cfg["meta"] = {"hook_name": "blocks.6.hook_resid_post", "sae_lens_version": "6.0.0"}
    else:  # pre-6.0: hook_point, topk via activation_fn_kwargs
        cfg["hook_point"] = "blocks.6.hook_resid_post"
        cfg["hook_point_layer"] = 6
        if arch == "topk":
            del cfg["k"]
            cfg["activation_fn_kwargs"] = {"k": K}
    (path / "cfg.json").write_text(json.dumps(cfg))
    save_file(arrays, str(path / "sae_weights.safetensors"))
    return path


@pytest.mark.parametrize("arch", architectures())
@pytest.mark.parametrize("style", ["v6", "meta", "pre6"])
def test_saelens_loads_and_encodes(tmp_path, arch, style):
    arrays = random_tensors(arch, RNG(2))
    path = write_saelens(tmp_path / "sae", arch, arrays, style=style)
    sae = load_sae(path)
    assert (sae.architecture, sae.d_in, sae.d_sae) == (arch, D_IN, D_SAE)
    assert (sae.hook_name, sae.layer, sae.cfg.site) == ("blocks.6.hook_resid_post", 6, "resid_post")
    assert sae.cfg.source_format == "saelens"
    x = rows()
    _close(sae.encode(torch.from_numpy(x)).numpy(), reference_encode(arch, arrays, x))
    _close(sae.W_dec.numpy(), arrays["W_dec"])


@pytest.mark.parametrize("arch", architectures())
@pytest.mark.parametrize("norm", ["none", "layer_norm"])
def test_save_saelens_round_trip(tmp_path, arch, norm):
    arrays = random_tensors(arch, RNG(4))
    sae = load_sae(write_saelens(tmp_path / "a", arch, arrays, norm=norm, apply_b_dec=False))
    out = save_saelens(sae, tmp_path / "b")
    cfg = json.loads((out / "cfg.json").read_text())
    assert cfg["metadata"]["hook_name"] == "blocks.6.hook_resid_post"
    again = load_sae(out)
    assert again.cfg == sae.cfg
    x = torch.from_numpy(rows())
    torch.testing.assert_close(again.encode(x), sae.encode(x))


def test_saelens_missing_tensor_names_file_and_key(tmp_path):
    arrays = random_tensors("jumprelu", RNG(0))
    del arrays["threshold"]
    path = write_saelens(tmp_path / "s", "jumprelu", arrays)
    with pytest.raises(SAEFormatError) as info:
        load_sae(path)
    assert info.value.key == "threshold" and str(path) in str(info.value)


def test_saelens_shape_mismatch_names_key(tmp_path):
    arrays = random_tensors("standard", RNG(0))
    arrays["b_enc"] = arrays["b_enc"][:-1]
    with pytest.raises(SAEFormatError) as info:
        load_sae(write_saelens(tmp_path / "s", "standard", arrays))
    assert info.value.key == "b_enc" and "shape" in str(info.value)


def test_saelens_unknown_architecture_and_missing_hook(tmp_path):
    arrays = random_tensors("standard", RNG(0))
    path = write_saelens(tmp_path / "s", "standard", arrays)
    cfg = json.loads((path / "cfg.json").read_text())
    (path / "cfg.json").write_text(json.dumps({**cfg, "architecture": "matryoshka"}))
    with pytest.raises(SAEFormatError, match="valid: gated, jumprelu, standard, topk"):
        load_sae(path)
    del cfg["metadata"]
    (path / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(SAEFormatError) as info:
        load_sae(path)
    assert info.value.key == "metadata.hook_name"
    (path / "cfg.json").write_text("{not json")
    with pytest.raises(SAEFormatError, match="JSON"):
        load_sae(path)


def test_unparseable_hook_needs_override(tmp_path):
    arrays = random_tensors("standard", RNG(0))
    path = write_saelens(tmp_path / "s", "standard", arrays)
    cfg = json.loads((path / "cfg.json").read_text())
    cfg["metadata"]["hook_name"] = "my.custom.hook"
    (path / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(SAEFormatError, match="hook_name="):
        load_sae(path)
    sae = load_sae(path, hook_name="model.layers.9")
    assert (sae.layer, sae.hook_name) == (9, "model.layers.9")


# ---------------------------------------------------------------- sparsify
def write_sparsify(root, *, hookpoint="layers.7", transcode=False, drop=None):
    rng = RNG(7)
    st = {
        "encoder.weight": (rng.normal(size=(D_SAE, D_IN)) / 4).astype(np.float32),
        "encoder.bias": (rng.normal(size=(D_SAE,)) * 0.2).astype(np.float32),
        "W_dec": (rng.normal(size=(D_SAE, D_IN)) / 8).astype(np.float32),
        "b_dec": (rng.normal(size=(D_IN,)) * 0.1).astype(np.float32),
    }
    if drop:
        del st[drop]
    path = root / hookpoint
    path.mkdir(parents=True)
    cfg = {"activation": "topk", "expansion_factor": 4, "normalize_decoder": True,
           "num_latents": D_SAE, "k": K, "multi_topk": False, "skip_connection": False,
           "transcode": transcode, "d_in": D_IN}
    (path / "cfg.json").write_text(json.dumps(cfg))
    save_file(st, str(path / "sae.safetensors"))
    return path, st


@pytest.mark.parametrize("transcode", [False, True])
def test_sparsify_loads_and_encodes(tmp_path, transcode):
    path, st = write_sparsify(tmp_path, transcode=transcode)
    sae = load_sae(path)
    assert (sae.architecture, sae.layer, sae.hook_name, sae.cfg.k) == ("topk", 7, "layers.7", K)
    x = rows().astype(np.float64)
    xin = x if transcode else x - st["b_dec"]
    pre = np_relu(xin @ st["encoder.weight"].T + st["encoder.bias"])  # sparsify: relu, then top-k
    _close(sae.encode(torch.from_numpy(rows())).numpy(), np_topk_dense(pre, K))
    f = np_topk_dense(pre, K).astype(np.float32)
    _close(sae.decode(torch.from_numpy(f)).numpy(), f @ st["W_dec"] + st["b_dec"])


def test_sparsify_missing_key(tmp_path):
    path, _ = write_sparsify(tmp_path, drop="encoder.bias")
    with pytest.raises(SAEFormatError) as info:
        load_sae(path)
    assert info.value.key == "encoder.bias" and "sae.safetensors" in str(info.value)


def test_sparsify_groupmax_is_rejected(tmp_path):
    path, _ = write_sparsify(tmp_path)
    cfg = json.loads((path / "cfg.json").read_text())
    (path / "cfg.json").write_text(json.dumps({**cfg, "activation": "groupmax"}))
    with pytest.raises(SAEFormatError, match="groupmax"):
        load_sae(path)


# ---------------------------------------------------------------- gemma scope
def write_gemma_scope(root, *, lower=False):
    rng = RNG(9)
    arrays = {
        "W_enc": (rng.normal(size=(D_IN, D_SAE)) / 4).astype(np.float32),
        "W_dec": (rng.normal(size=(D_SAE, D_IN)) / 8).astype(np.float32),
        "b_enc": (rng.normal(size=(D_SAE,)) * 0.2).astype(np.float32),
        "b_dec": (rng.normal(size=(D_IN,)) * 0.1).astype(np.float32),
        "threshold": rng.uniform(0.1, 0.6, size=(D_SAE,)).astype(np.float32),
    }
    path = root / "gemma-scope-2b-pt-res" / "layer_20" / "width_16k" / "average_l0_71"
    path.mkdir(parents=True)
    stored = {("w_" + k[2:] if lower and k.startswith("W_") else k): v for k, v in arrays.items()}
    np.savez(path / "params.npz", **stored)
    return path, arrays


@pytest.mark.parametrize("lower", [False, True])
def test_gemma_scope_loads_and_encodes(tmp_path, lower):
    path, a = write_gemma_scope(tmp_path, lower=lower)
    for target in (path, path / "params.npz"):
        sae = load_sae(target)
        assert (sae.architecture, sae.layer, sae.hook_name) == (
            "jumprelu", 20, "blocks.20.hook_resid_post")
        x = rows().astype(np.float64)
        pre = x @ a["W_enc"] + a["b_enc"]  # Gemma Scope: no b_dec subtraction
        _close(sae.encode(torch.from_numpy(rows())).numpy(), (pre > a["threshold"]) * np_relu(pre))


def test_gemma_scope_missing_threshold(tmp_path):
    path = tmp_path / "layer_3"
    path.mkdir()
    a = random_tensors("standard", RNG(0))
    np.savez(path / "params.npz", **a)
    with pytest.raises(SAEFormatError) as info:
        load_sae(path)
    assert info.value.key == "threshold"


def test_gemma_scope_without_layer_needs_hook_name(tmp_path):
    path, _ = write_gemma_scope(tmp_path)
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "params.npz").write_bytes((path / "params.npz").read_bytes())
    with pytest.raises(SAEFormatError, match="hook_name"):
        load_sae(flat)
    assert load_sae(flat, hook_name="blocks.4.hook_resid_post").layer == 4


def test_npz_with_pickled_object_is_refused(tmp_path):
    path = tmp_path / "layer_1"
    path.mkdir()
    np.savez(path / "params.npz", W_enc=np.array([{"evil": 1}], dtype=object))
    with pytest.raises(SAEFormatError, match="npz"):
        load_sae(path)


# ---------------------------------------------------------------- llama scope
def write_llama_scope(root, *, names="linear", dataset_norm=True, decoder_norm=True):
    rng = RNG(11)
    enc_w = (rng.normal(size=(D_SAE, D_IN)) / 4).astype(np.float32)  # nn.Linear [out, in]
    enc_b = (rng.normal(size=(D_SAE,)) * 0.2).astype(np.float32)
    dec_w = (rng.normal(size=(D_IN, D_SAE)) / 3).astype(np.float32)
    dec_b = (rng.normal(size=(D_IN,)) * 0.1).astype(np.float32)
    if names == "linear":
        st = {"encoder.weight": enc_w, "encoder.bias": enc_b,
              "decoder.weight": dec_w, "decoder.bias": dec_b}
    else:
        st = {"W_E": np.ascontiguousarray(enc_w.T), "b_E": enc_b,
              "W_D": np.ascontiguousarray(dec_w.T), "b_D": dec_b}
    path = root / "Llama3_1-8B-Base-L15R-8x"
    (path / "checkpoints").mkdir(parents=True)
    hp = {
        "d_model": D_IN, "d_sae": D_SAE, "hook_point_in": "blocks.15.hook_resid_post",
        "hook_point_out": "blocks.15.hook_resid_post", "act_fn": "jumprelu",
        "jump_relu_threshold": 0.25, "top_k": 50, "expansion_factor": 4,
        "norm_activation": "dataset-wise" if dataset_norm else "inference",
        "dataset_average_activation_norm": {"in": 7.5, "out": 7.5},
        "sparsity_include_decoder_norm": decoder_norm, "use_decoder_bias": True,
        "apply_decoder_bias_to_pre_encoder": False,
    }
    (path / "hyperparams.json").write_text(json.dumps(hp))
    save_file(st, str(path / "checkpoints" / "final.safetensors"))
    return path, (enc_w, enc_b, dec_w, dec_b)


@pytest.mark.parametrize("names", ["linear", "lm_saes"])
@pytest.mark.parametrize("dataset_norm", [True, False])
@pytest.mark.parametrize("decoder_norm", [True, False])
def test_llama_scope_loads_and_encodes(tmp_path, names, dataset_norm, decoder_norm):
    path, (enc_w, enc_b, dec_w, dec_b) = write_llama_scope(
        tmp_path, names=names, dataset_norm=dataset_norm, decoder_norm=decoder_norm)
    sae = load_sae(path)
    assert (sae.architecture, sae.layer, sae.hook_name) == (
        "jumprelu", 15, "blocks.15.hook_resid_post")
    # lm-saes semantics, computed from the raw arrays
    x = rows().astype(np.float64) * 3
    f_in = np.sqrt(D_IN) / 7.5 if dataset_norm else 1.0
    pre = (x * f_in) @ enc_w.T + enc_b
    norms = np.linalg.norm(dec_w, axis=0) if decoder_norm else np.ones(D_SAE)
    acts = pre * ((pre * norms) > 0.25)
    _close(sae.encode(torch.from_numpy(x.astype(np.float32))).numpy(), acts)
    recon = (acts @ dec_w.T + dec_b) / f_in
    got = sae.decode(torch.from_numpy(acts.astype(np.float32))).numpy()
    np.testing.assert_allclose(got, recon, rtol=1e-4, atol=1e-4)


def test_llama_scope_missing_decoder(tmp_path):
    path, _ = write_llama_scope(tmp_path)
    from safetensors.numpy import load_file
    st = load_file(str(path / "checkpoints" / "final.safetensors"))
    del st["decoder.bias"]
    save_file(st, str(path / "checkpoints" / "final.safetensors"))
    with pytest.raises(SAEFormatError) as info:
        load_sae(path)
    assert info.value.key == "decoder.bias" and "final.safetensors" in str(info.value)


# ---------------------------------------------------------------- detection
def test_formats_are_registered_and_detected(tmp_path):
    assert set(format_names()) == {"saelens", "sparsify", "gemma_scope", "llama_scope"}
    write_saelens(tmp_path / "a", "standard", random_tensors("standard", RNG(0)))
    sp, _ = write_sparsify(tmp_path / "b")
    gs, _ = write_gemma_scope(tmp_path / "c")
    ls, _ = write_llama_scope(tmp_path / "d")
    for path, name in [(tmp_path / "a", "saelens"), (sp, "sparsify"), (gs, "gemma_scope"),
                       (ls, "llama_scope")]:
        assert load_sae(path).cfg.source_format == name
        assert load_sae(path, format=name).cfg.source_format == name


def test_unknown_format_errors(tmp_path):
    with pytest.raises(SAEFormatError, match="no known SAE format"):
        load_sae(tmp_path)
    with pytest.raises(SAEFormatError, match="does not exist"):
        load_sae(tmp_path / "nope")
    with pytest.raises(SAEFormatError, match="valid: saelens"):
        get_format("onnx")
