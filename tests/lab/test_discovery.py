"""`latentguard features contrast` / `features top` on the tiny model and its tiny SAE."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from latentguard.cli.main import main
from latentguard.lab.activations import TextEncoder
from latentguard.lab.discovery import (
    DiscoveryError,
    TokenContext,
    context_text,
    contrast,
    read_texts,
    top,
)
from latentguard.lab.tinymodel import build_tiny_model, build_tiny_sae
from latentguard.monitors.discovery import Context, pool, rank_features
from latentguard.monitors.sae import load_sae

CODE = ["import os\nos.system(user_input)\n", "eval(input())", "os.system('rm -rf ' + path)",
        "exec(open(name).read())"]
PROSE = ["The quick brown fox jumps over the lazy dog.", "Hello, world! How are you today?",
         "A sparse autoencoder turns activations into features.", "I am fine, thank you."]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return build_tiny_model(root / "model"), build_tiny_sae(root / "sae", layer=1)


@pytest.fixture(scope="module")
def encoder(tiny: tuple[Path, Path]) -> TextEncoder:
    return TextEncoder.load(tiny[0], layer=1, batch=3)


def test_padded_batches_give_the_rows_of_single_texts(encoder: TextEncoder) -> None:
    texts = CODE + PROSE
    batched = {e.index: e for e in encoder.encode(texts)}
    assert sorted(batched) == list(range(len(texts)))
    single = TextEncoder(encoder.model, encoder.tokenizer, 1, batch=1)
    for e in single.encode(texts):
        assert batched[e.index].ids == e.ids == encoder.token_ids(texts[e.index])
        assert e.rows.shape == (len(e.ids), 64)
        torch.testing.assert_close(batched[e.index].rows, e.rows, atol=1e-4, rtol=1e-4)


def test_contrast_ranks_the_pooled_sae_features(tiny: tuple[Path, Path],
                                                encoder: TextEncoder) -> None:
    sae = load_sae(tiny[1])
    got = contrast(encoder, sae, CODE, PROSE, top=5)

    def pooled(texts: list[str]) -> torch.Tensor:
        acts = [sae.encode(e.rows) for e in sorted(encoder.encode(texts), key=lambda e: e.index)]
        return pool(acts, "max")

    assert got == rank_features(pooled(CODE), pooled(PROSE), top=5)
    assert got[0].auroc >= got[-1].auroc and 0.0 <= got[-1].auroc <= 1.0


def test_top_points_at_the_strongest_token(tiny: tuple[Path, Path], encoder: TextEncoder) -> None:
    sae = load_sae(tiny[1])
    texts = CODE + PROSE
    feature = contrast(encoder, sae, CODE, PROSE, top=1)[0].index
    found = top(encoder, sae, texts, feature, n=3)
    assert 1 <= len(found) <= 3
    best = max(float(sae.encode(e.rows)[:, feature].max()) for e in encoder.encode(texts))
    assert found[0].context.value == pytest.approx(best)
    for c in found:
        assert len(c.tokens) == len(c.context.values)
        assert float(c.context.values[c.context.position]) == c.context.value
    with pytest.raises(DiscoveryError, match="out of range"):
        top(encoder, sae, texts, 10_000)


def test_context_text_highlights_the_firing_tokens() -> None:
    ctx = TokenContext(Context(0, 2, 4.0, torch.tensor([0.0, 1.0, 4.0, 3.0, 0.0, 0.0])),
                       ["a", "b", "c", "d", "e", "f"])
    text = context_text(ctx, width=2)
    assert text.plain == "abcde..."
    styles = {text.plain[s.start:s.end]: str(s.style) for s in text.spans}
    assert styles["c"] == "bold black on bright_red"
    assert styles["d"] == "black on red" and styles["b"] == "black on yellow"
    assert "a" not in styles and "e" not in styles


def test_read_texts(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.py").write_text("x = 1\n")
    (tmp_path / "d" / "b.txt").write_text("whole file\nis one text\n")
    (tmp_path / "lines.txt").write_text("one\n\ntwo\n")
    (tmp_path / "t.jsonl").write_text('{"text": "three"}\n"four"\n')
    got = read_texts([tmp_path / "d", tmp_path / "lines.txt", tmp_path / "t.jsonl"])
    assert got == ["x = 1\n", "whole file\nis one text\n", "one", "two", "three", "four"]
    assert read_texts([tmp_path / "d"], lines=1) == ["x = 1\n", "whole file\n", "is one text\n"]
    (tmp_path / "l.jsonl").write_text("".join(json.dumps({"text": f"t{i}", "label": i % 2,
                                                           "split": "a"}) + "\n" for i in range(6)))
    assert read_texts([f"{tmp_path / 'l.jsonl'}:label=1,split=a"]) == ["t1", "t3", "t5"]
    with pytest.raises(DiscoveryError, match="no texts"):
        read_texts([f"{tmp_path / 'l.jsonl'}:label=1,split=b"])
    assert read_texts([tmp_path / "l.jsonl"], limit=2) == read_texts([tmp_path / "l.jsonl"],
                                                                     limit=2)
    assert len(read_texts([tmp_path / "l.jsonl"], limit=2)) == 2
    with pytest.raises(DiscoveryError, match="no such"):
        read_texts([tmp_path / "missing"])
    with pytest.raises(DiscoveryError, match="no such"):
        read_texts([f"{tmp_path / 'missing.jsonl'}:label=1"])
    (tmp_path / "bad.jsonl").write_text('{"label": 1}\n')
    with pytest.raises(DiscoveryError, match="bad.jsonl:1"):
        read_texts([tmp_path / "bad.jsonl"])


def test_cli(tiny: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model, sae = tiny
    (tmp_path / "a.txt").write_text("\n".join(s.replace("\n", " ") for s in CODE))
    (tmp_path / "b.txt").write_text("\n".join(PROSE))
    common = ["--model", str(model), "--sae", str(sae), "--quiet"]
    assert main(["features", "contrast", "--a", str(tmp_path / "a.txt"), "--b",
                 str(tmp_path / "b.txt"), "--top", "3", "--json", *common]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["n_a"], out["n_b"], len(out["features"])) == (4, 4, 3)
    feature = out["features"][0]["index"]
    (Path(sae) / "features.json").write_text(json.dumps(
        {"features": [{"index": feature, "label": "planted label"}]}))
    try:
        assert main(["features", "contrast", "--a", str(tmp_path / "a.txt"), "--b",
                     str(tmp_path / "b.txt"), "--top", "3", *common]) == 0
        table = capsys.readouterr().out
        assert "AUROC" in table and "planted label" in table
        assert main(["features", "top", str(feature), "--corpus", str(tmp_path / "a.txt"),
                     str(tmp_path / "b.txt"), "--n", "2", *common]) == 0
        shown = capsys.readouterr().out
        assert f"feature {feature}: planted label" in shown and "#1 text" in shown
    finally:
        (Path(sae) / "features.json").unlink()
    assert main(["features", "top", str(feature), "--corpus", str(tmp_path / "a.txt"), "--json",
                 *common]) == 0
    contexts = json.loads(capsys.readouterr().out)
    assert contexts and contexts[0]["value"] == pytest.approx(max(contexts[0]["values"]), 1e-4)
    assert main(["features", "top", "1", "--corpus", str(tmp_path / "nope"), *common]) == 1
    assert "no such file" in capsys.readouterr().err
