import json

import pytest
import torch
from safetensors.torch import save_file

from latentguard.monitors.errors import SAEFormatError, ShapeError, UnknownFeatureError
from latentguard.monitors.probes import Probe, ProbeMeta, ProbeSet


def make(tmp_path, name="deception", d=8, seed=0, **meta):
    g = torch.Generator().manual_seed(seed)
    p = Probe(ProbeMeta(name=name, **meta), torch.randn(d, generator=g))
    p.save(tmp_path)
    return p


def test_score_matches_per_probe_dot_products(tmp_path):
    a = make(tmp_path, "deception", bias=-0.5, threshold=0.2)
    b = make(tmp_path, "toxicity", seed=1, bias=0.25, activation="sigmoid")
    ps = ProbeSet.load(tmp_path, d_in=8)
    assert ps.names == ["deception", "toxicity"]
    x = torch.randn(5, 8)
    got = ps.score(x)
    assert got.shape == (5, 2)
    torch.testing.assert_close(got[:, 0], x @ a.direction - 0.5)
    torch.testing.assert_close(got[:, 1], torch.sigmoid(x @ b.direction + 0.25))
    assert ps.probe("deception").meta.threshold == 0.2
    with pytest.raises(UnknownFeatureError, match="toxicity"):
        ps.probe("nope")


def test_bias_from_safetensors_and_name_from_file(tmp_path):
    save_file({"direction": torch.ones(4), "bias": torch.tensor(2.0)},
              str(tmp_path / "helpful.safetensors"))
    (tmp_path / "helpful.json").write_text(json.dumps({"threshold": 1.0}))
    ps = ProbeSet.load(tmp_path)
    torch.testing.assert_close(ps.score(torch.ones(1, 4)), torch.tensor([[6.0]]))


def test_errors(tmp_path):
    make(tmp_path, d=8)
    with pytest.raises(SAEFormatError, match="width 8"):
        ProbeSet.load(tmp_path, d_in=16)
    with pytest.raises(ShapeError):
        ProbeSet.load(tmp_path).score(torch.zeros(2, 3))
    save_file({"w": torch.ones(8)}, str(tmp_path / "bad.safetensors"))
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(SAEFormatError) as info:
        ProbeSet.load(tmp_path)
    assert info.value.key == "direction"
    (tmp_path / "bad.json").write_text(json.dumps({"activation": "relu"}))
    save_file({"direction": torch.ones(8)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(SAEFormatError, match="activation"):
        ProbeSet.load(tmp_path)
    with pytest.raises(SAEFormatError, match="not found"):
        ProbeSet.load(tmp_path / "missing")


def test_empty_set_scores_zero_columns():
    assert ProbeSet([]).score(torch.zeros(3, 5)).shape == (3, 0)


def make_features_probe(tmp_path, name="code-sae", d_sae=32, weights=None, **meta):
    direction = torch.zeros(d_sae)
    for f, w in (weights or {3: 1.0, 20: -0.5}).items():
        direction[f] = w
    p = Probe(ProbeMeta(name=name, input="features", **meta), direction)
    p.save(tmp_path)
    return p


def test_features_probe_reads_only_its_features(tmp_path):
    make(tmp_path, "deception", d=8, bias=0.5)
    make_features_probe(tmp_path, "code-sae", weights={3: 1.0, 20: -0.5}, bias=-1.0)
    make_features_probe(tmp_path, "other-sae", weights={20: 2.0, 7: 1.0})
    ps = ProbeSet.load(tmp_path, d_in=8, d_sae=32)
    assert ps.names == ["code-sae", "deception", "other-sae"]
    assert ps.reads_features
    assert ps.feature_support.tolist() == [3, 7, 20]  # the union, ascending
    assert ps.probe("code-sae").weights() == [(3, 1.0), (20, -0.5)]
    x = torch.randn(4, 8)
    acts = torch.rand(4, 32)
    got = ps.score(x, acts[:, ps.feature_support])
    torch.testing.assert_close(got[:, 0], acts[:, 3] - 0.5 * acts[:, 20] - 1.0)
    torch.testing.assert_close(got[:, 1], x @ ps.probe("deception").direction + 0.5)
    torch.testing.assert_close(got[:, 2], 2.0 * acts[:, 20] + acts[:, 7])
    terms = ps.contributions("code-sae", acts[0, ps.feature_support])
    assert [f for f, _ in terms] == sorted([3, 20], key=lambda f: -abs(
        float(acts[0, f]) * (1.0 if f == 3 else 0.5)))
    assert dict(terms)[20] == pytest.approx(-0.5 * float(acts[0, 20]))
    with pytest.raises(UnknownFeatureError, match="deception"):
        ps.contributions("deception", acts[0, ps.feature_support])
    with pytest.raises(ShapeError, match="feature_values"):
        ps.score(x)
    with pytest.raises(ShapeError, match=r"\[4, 3\]"):
        ps.score(x, acts)


def test_features_probe_width_is_checked_against_d_sae(tmp_path):
    make_features_probe(tmp_path, d_sae=32)
    assert ProbeSet.load(tmp_path, d_in=8, d_sae=32).d_sae == 32  # d_in does not apply to it
    with pytest.raises(SAEFormatError, match="width 32, the SAE has 64 features"):
        ProbeSet.load(tmp_path, d_in=8, d_sae=64)
    (tmp_path / "code-sae.json").write_text(json.dumps({"input": "logits"}))
    with pytest.raises(SAEFormatError, match="input"):
        ProbeSet.load(tmp_path)
