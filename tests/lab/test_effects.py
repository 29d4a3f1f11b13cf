"""`latentguard features effect` on the tiny model: directions that provably move the output,
interventions that provably do nothing, the mean-difference direction, and the CLI's errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from latentguard.cli.main import main
from latentguard.lab.activations import TextEncoder
from latentguard.lab.directions import (
    EffectError,
    feature_direction,
    load_direction,
    mean_difference,
    vector_direction,
)
from latentguard.lab.effects import Condition, _steer_hook, measure_effects, read_prompts
from latentguard.lab.tinymodel import build_tiny_model, build_tiny_sae
from latentguard.monitors.sae import SAE, StandardSAE, load_sae, save_saelens
from latentguard.monitors.steering import apply_steer

PROMPTS = ["def add(a, b):", "import os\nos.system(", "Hello, world! How are",
           "The quick brown fox jumps over the", "eval("]
DEAD = 7
"""A feature of the planted SAE that never fires (its encoder bias is -1e4)."""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("tiny")
    model = build_tiny_model(root / "model")
    sae = load_sae(build_tiny_sae(root / "random-sae", layer=1))
    tensors = sae.state_dict()
    b_enc = tensors["b_enc"].clone()
    b_enc[DEAD] = -1e4
    planted = StandardSAE(sae.cfg, {**tensors, "b_enc": b_enc})
    save_saelens(planted, root / "sae")
    return model, root / "sae"


@pytest.fixture(scope="module")
def encoder(tiny: tuple[Path, Path]) -> TextEncoder:
    return TextEncoder.load(tiny[0], layer=1, batch=3)


@pytest.fixture(scope="module")
def sae(tiny: tuple[Path, Path]) -> SAE:
    return load_sae(tiny[1])


def logit_direction(encoder: TextEncoder, v: torch.Tensor) -> torch.Tensor:
    """What adding a large multiple of ``v`` after the last layer does to the logits: the
    final RMSNorm keeps its direction (times the norm's weight), the unembedding maps it."""
    model = encoder.model
    return model.lm_head.weight @ (model.model.norm.weight * v)


def round_trips(encoder: TextEncoder, token: int) -> bool:
    text = encoder.tokenizer.decode([token])
    return encoder.tokenizer(text, add_special_tokens=False)["input_ids"][:1] == [token]


def test_zero_strength_and_a_dead_feature_change_nothing(encoder: TextEncoder, sae: SAE) -> None:
    d = feature_direction(sae, DEAD)
    report = measure_effects(encoder, d, PROMPTS, [
        Condition("add", 0.0), Condition("ablate"), Condition("clamp", 0.0)], targets=["def"])
    assert report.value_max == 0.0 and report.value_last_mean == 0.0
    for c in report.conditions:
        assert c.kl_last == c.kl_mean == c.kl_last_max == 0.0
        assert c.top1_changed == 0.0 and c.gained == [] and c.lost == []
        assert c.targets[0].delta == 0.0
        for p in c.prompts:
            assert p.kl_last == 0.0 and p.top1_before == p.top1_after
    vector = vector_direction(torch.randn(sae.d_in), sae, "random")
    zero = measure_effects(encoder, vector, PROMPTS, [Condition("add", 0.0)])
    assert zero.conditions[0].kl_mean == 0.0


def test_adding_a_decoder_row_raises_the_token_it_writes(encoder: TextEncoder, sae: SAE) -> None:
    # A feature whose decoder row, pushed through the final norm and unembedding, favours a
    # token that survives decode -> encode, so it can be named as a target.
    for feature in range(sae.d_sae):
        token = int(logit_direction(encoder, sae.W_dec[feature]).argmax())
        if round_trips(encoder, token):
            break
    text = encoder.tokenizer.decode([token])
    report = measure_effects(encoder, feature_direction(sae, feature), PROMPTS,
                             [Condition("add", 2.0), Condition("add", 1e4)],
                             targets=[text], top=5)
    small, big = report.conditions
    assert report.direction.feature == feature and report.direction.kind == "feature"
    assert big.kl_last > small.kl_last > 0.0 and big.kl_last > 1.0
    assert token in [s.token for s in big.gained]
    assert big.targets[0].token == token and big.targets[0].delta > 1.0
    for p in big.prompts:
        assert p.top1_after.token == token and p.targets[0].delta > 0.0
        assert token in [s.token for s in p.gained]
        assert p.lost and all(s.delta < 0 for s in p.lost)


def test_an_unembedding_direction_from_a_file(encoder: TextEncoder, sae: SAE,
                                              tmp_path: Path) -> None:
    token = next(t for t in range(2, 384) if round_trips(encoder, t))
    row = encoder.model.lm_head.weight[token].detach().clone()
    save_file({"other": torch.ones(3), "unembed": row * 3}, str(tmp_path / "dirs.safetensors"))
    d = load_direction(f"{tmp_path / 'dirs.safetensors'}:unembed", sae)
    assert d.kind == "vector" and d.norm == pytest.approx(float(row.norm()) * 3, rel=1e-5)
    report = measure_effects(encoder, d, PROMPTS, [Condition("add", 300.0)],
                             targets=[encoder.tokenizer.decode([token])])
    c = report.conditions[0]
    assert token in [s.token for s in c.gained] and c.targets[0].delta > 1.0 and c.top1_changed > 0


def test_a_vector_is_steered_on_its_projection(sae: SAE) -> None:
    u = torch.randn(sae.d_in)
    d = vector_direction(u * 5, sae, "v")
    rows = torch.randn(6, sae.d_in) * 3
    torch.testing.assert_close(d.values(rows), rows @ d.unit)
    for c in (2.5, 0.0, -1.5):
        steered = apply_steer(rows, d.sae, d.steer("clamp", c))
        torch.testing.assert_close(steered @ d.unit, torch.full((6,), c), atol=1e-4, rtol=0)
        rest = rows - (rows @ d.unit)[:, None] * d.unit
        torch.testing.assert_close(steered - (steered @ d.unit)[:, None] * d.unit, rest,
                                   atol=1e-4, rtol=0)
    ablated = apply_steer(rows, d.sae, d.steer("ablate", None))
    torch.testing.assert_close(ablated @ d.unit, torch.zeros(6), atol=1e-4, rtol=0)
    added = apply_steer(rows, d.sae, d.steer("add", -2.0))
    torch.testing.assert_close(added, rows - 2.0 * d.unit, atol=1e-5, rtol=0)


def test_padded_batches_give_the_effects_of_single_prompts(encoder: TextEncoder,
                                                           sae: SAE) -> None:
    d = feature_direction(sae, 3)
    conds = [Condition("clamp", 4.0), Condition("ablate")]
    batched = measure_effects(encoder, d, PROMPTS, conds, targets=["def"])
    single = measure_effects(TextEncoder(encoder.model, encoder.tokenizer, 1, batch=1), d,
                             PROMPTS, conds, targets=["def"])
    for a, b in zip(batched.conditions, single.conditions, strict=True):
        for pa, pb in zip(a.prompts, b.prompts, strict=True):
            assert pa.index == pb.index and pa.n_tokens == pb.n_tokens
            assert pa.kl_last == pytest.approx(pb.kl_last, rel=1e-3, abs=1e-6)
            assert pa.top1_after.token == pb.top1_after.token
            assert pa.targets[0].delta == pytest.approx(pb.targets[0].delta, abs=1e-4)


def test_skip_bos_leaves_position_zero(sae: SAE) -> None:
    d = feature_direction(sae, 3)
    hidden = torch.randn(2, 5, sae.d_in)
    steer = d.steer("add", 10.0)
    out = _steer_hook(d, steer, 1)(None, None, (hidden, "rest"))
    assert out[1] == "rest"
    torch.testing.assert_close(out[0][:, 0], hidden[:, 0])
    torch.testing.assert_close(out[0][:, 1:], hidden[:, 1:] + 10.0 * sae.W_dec[3])
    every = _steer_hook(d, steer, 0)(None, None, hidden)
    torch.testing.assert_close(every, hidden + 10.0 * sae.W_dec[3])


def test_mean_difference_points_the_planted_way(tiny: tuple[Path, Path]) -> None:
    encoder = TextEncoder.load(tiny[0], layer=0)
    pos, neg = ["12345 678", "90 12 34 5"], ["The quick brown fox", "Hello, world!"]
    planted = {i for t in pos for i in encoder.token_ids(t)}
    assert not planted & {i for t in neg for i in encoder.token_ids(t)}
    before = mean_difference(encoder, pos, neg)
    v = torch.randn(64, generator=torch.Generator().manual_seed(0))
    v /= v.norm()
    with torch.no_grad():
        encoder.model.model.embed_tokens.weight[sorted(planted)] += 100.0 * v
    diff = mean_difference(encoder, pos, neg)
    assert torch.nn.functional.cosine_similarity(diff, v, dim=0) > 0.9
    assert abs(float(torch.nn.functional.cosine_similarity(before, v, dim=0))) < 0.5
    rows = {e.index: e.rows for e in encoder.encode(pos + neg)}
    want = (rows[0].mean(0) + rows[1].mean(0)) / 2 - (rows[2].mean(0) + rows[3].mean(0)) / 2
    torch.testing.assert_close(diff, want, atol=1e-4, rtol=1e-5)


def test_read_prompts(tmp_path: Path) -> None:
    (tmp_path / "p.jsonl").write_text('"one"\n\n{"prompt": "two", "text": "x"}\n{"text": "3"}\n')
    (tmp_path / "p.txt").write_text("four\nfive\n")
    got = read_prompts([tmp_path / "p.jsonl", tmp_path / "p.txt"], ["six"])
    assert got == ["one", "two", "3", "four", "five", "six"]
    (tmp_path / "bad.jsonl").write_text('"ok"\n{"prompt": 3}\n')
    with pytest.raises(EffectError, match=r"--prompts: .*bad.jsonl:2: expected"):
        read_prompts([tmp_path / "bad.jsonl"])
    (tmp_path / "broken.jsonl").write_text('"ok"\n"ok"\n{oops\n')
    with pytest.raises(EffectError, match=r"broken.jsonl:3: not JSON"):
        read_prompts([tmp_path / "broken.jsonl"])
    with pytest.raises(EffectError, match="--prompt: prompt 2 is empty"):
        read_prompts([], ["a", ""])
    with pytest.raises(EffectError, match="--prompts: no prompts"):
        read_prompts([], [])


def test_cli_reports(tiny: tuple[Path, Path], tmp_path: Path,
                     capsys: pytest.CaptureFixture[str]) -> None:
    model, sae = tiny
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n"
                                                    for p in PROMPTS[:3]))
    common = ["features", "effect", "--model", str(model), "--sae", str(sae), "--quiet"]
    out = tmp_path / "out" / "report.json"
    assert main([*common, "--feature", "3", "--prompts", str(tmp_path / "prompts.jsonl"),
                 "--prompt", "eval(", "--mode", "add", "--strengths", "0", "20",
                 "--target", " shell", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "steering feature 3 at layer 1" in table and "add 20" in table
    assert "dlogp ' shell'" in table and "KL last" in table
    report = json.loads(out.read_text())
    assert report["n_prompts"] == 4 and report["model"] == str(model)
    assert [c["strength"] for c in report["conditions"]] == [0.0, 20.0]
    assert report["conditions"][0]["kl_last"] == 0.0 < report["conditions"][1]["kl_last"]
    assert report["conditions"][1]["targets"][0]["target"] == " shell"

    save_file({"direction": torch.randn(64)}, str(tmp_path / "probe.safetensors"))
    assert main([*common, "--direction", str(tmp_path / "probe.safetensors"), "--prompt", "x",
                 "--mode", "ablate", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["direction"]["kind"] == "vector" and len(got["direction"]["nearest_features"]) == 5
    assert got["conditions"][0]["mode"] == "ablate" and got["conditions"][0]["strength"] is None

    (tmp_path / "pos.txt").write_text("12345 678\n90 12 34 5\n")
    (tmp_path / "neg.txt").write_text("The quick brown fox\nHello, world!\n")
    assert main([*common, "--mean-diff", str(tmp_path / "pos.txt"), str(tmp_path / "neg.txt"),
                 "--prompt", "def f(", "--strengths", "1", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["direction"]["kind"] == "mean-diff" and got["direction"]["norm"] > 0


def test_cli_errors_name_the_flag(tiny: tuple[Path, Path], tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    model, sae = tiny
    common = ["features", "effect", "--model", str(model), "--sae", str(sae), "--quiet"]
    (tmp_path / "bad.jsonl").write_text('{"prompt": "ok"}\n{"prompt": ["no"]}\n')
    save_file({"a": torch.randn(64), "b": torch.randn(64)}, str(tmp_path / "two.safetensors"))
    save_file({"direction": torch.randn(32)}, str(tmp_path / "narrow.safetensors"))
    save_file({"direction": torch.randn(256)}, str(tmp_path / "feats.safetensors"))
    (tmp_path / "empty.txt").write_text("\n")
    (tmp_path / "feats.json").write_text(json.dumps({"name": "feats", "input": "features"}))
    cases = [
        (["--feature", "9999", "--prompt", "x", "--strengths", "1"],
         "--feature: 9999 is out of range 0..255"),
        (["--feature", "1", "--prompt", "x"], "--strengths: --mode clamp needs"),
        (["--feature", "1", "--prompt", "x", "--mode", "ablate", "--strengths", "1"],
         "--strengths: --mode ablate takes no strengths"),
        (["--feature", "1", "--prompts", str(tmp_path / "bad.jsonl"), "--strengths", "1"],
         "bad.jsonl:2: expected"),
        (["--feature", "1", "--prompts", str(tmp_path / "missing.jsonl"), "--strengths", "1"],
         "--prompts: " + str(tmp_path / "missing.jsonl") + ": no such file"),
        (["--feature", "1", "--strengths", "1"], "--prompts: no prompts"),
        (["--feature", "1", "--prompt", "x", "--strengths", "1", "--target", ""],
         "--target: '' has no tokens"),
        (["--feature", "1", "--prompt", "x", "--strengths", "1", "--top", "0"],
         "--top: must be at least 1"),
        (["--direction", str(tmp_path / "two.safetensors"), "--prompt", "x", "--mode",
          "ablate"], "holds 2 tensors (a, b); name one"),
        (["--direction", f"{tmp_path / 'two.safetensors'}:c", "--prompt", "x", "--mode",
          "ablate"], "has no tensor 'c' (it has a, b)"),
        (["--direction", str(tmp_path / "narrow.safetensors"), "--prompt", "x", "--mode",
          "ablate"], "has shape [32]; the SAE reads residual rows of width 64"),
        (["--direction", str(tmp_path / "feats.safetensors"), "--prompt", "x", "--mode",
          "ablate"], "is a probe over SAE features"),
        (["--direction", str(tmp_path / "nope.safetensors"), "--prompt", "x", "--mode",
          "ablate"], "--direction: " + str(tmp_path / "nope.safetensors") + ": no such file"),
        (["--direction", str(tmp_path / "bad.jsonl"), "--prompt", "x", "--mode", "ablate"],
         "expected FILE.safetensors[:TENSOR]"),
        (["--mean-diff", str(tmp_path / "none.txt"), str(tmp_path / "bad.jsonl"), "--prompt",
          "x", "--mode", "ablate"], f"--mean-diff: {tmp_path / 'none.txt'}: no such file"),
        (["--feature", "1", "--prompts", str(tmp_path / "empty.txt"), "--strengths", "1"],
         "--prompts: no texts found in"),
    ]
    for extra, message in cases:
        assert main([*common, *extra]) == 1, extra
        err = capsys.readouterr().err
        assert message in err, (extra, err)
    with pytest.raises(SystemExit):
        main([*common, "--feature", "1", "--direction", "x.safetensors", "--prompt", "x"])
    assert "not allowed with argument" in capsys.readouterr().err
