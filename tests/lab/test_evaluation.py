"""`latentguard eval` / `calibrate` on the tiny model: planted signals with known AUROCs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

from latentguard.cli.main import main
from latentguard.lab.activations import TextEncoder
from latentguard.lab.calibration import calibrate, dump_pack
from latentguard.lab.evalcache import encode_cached
from latentguard.lab.evaluation import (
    EvaluationError,
    evaluate,
    load_monitor,
    read_labelled,
    text_signals,
)
from latentguard.lab.tinymodel import CORPUS, build_tiny_model, build_tiny_sae
from latentguard.monitors.rules import load_rule_pack, rule_signals
from latentguard.monitors.sae import load_sae

BASE = list(dict.fromkeys(CORPUS))
# Distinct first tokens: the model is causal, so texts sharing a start would share maxima.
TEXTS = [f"{n} {t}" for n, t in enumerate(BASE + [f"{a} {b}" for a, b in zip(
    BASE, BASE[1:] + BASE[:1], strict=True)] + [f"{b}\n{a}" for a, b in zip(
        BASE, BASE[3:] + BASE[:3], strict=True)])]


def _between(sorted_values: list[float], k: int) -> float:
    """A threshold between the k-th and (k+1)-th smallest values (robust to float noise)."""
    return (sorted_values[k - 1] + sorted_values[k]) / 2


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("eval")
    model, sae_dir = build_tiny_model(root / "model"), build_tiny_sae(root / "sae", layer=1)
    sae = load_sae(sae_dir)
    encoder = TextEncoder.load(model, layer=1, batch=8)
    acts = [sae.encode(r) for r in encode_cached(encoder, model, TEXTS, None)]
    maxima = torch.stack([a.amax(0) for a in acts])
    feature = int(maxima.var(0).argmax())
    values = maxima[:, feature].tolist()
    assert len(set(values)) == len(values)  # distinct: the planted labels are well defined
    ordered = sorted(values)
    label_cut = _between(ordered, len(values) // 2)
    rule_cut = _between(ordered, len(values) // 4)
    labels = [int(v > label_cut) for v in values]
    probes = sae_dir / "probes"
    probes.mkdir()
    direction = torch.zeros(sae.d_sae)
    direction[feature] = 1.0
    save_file({"direction": direction}, str(probes / "planted.safetensors"))
    (probes / "planted.json").write_text(json.dumps(
        {"name": "planted", "input": "features", "threshold": label_cut}))
    save_file({"direction": torch.zeros(sae.d_in)}, str(probes / "flat.safetensors"))
    (probes / "flat.json").write_text(json.dumps({"name": "flat", "threshold": 0.5}))
    other = (feature + 1) % sae.d_sae
    pack = {"rules": [
        {"name": "planted", "scope": "both", "when": {"feature": feature, "threshold": rule_cut}},
        {"name": "flat", "scope": "prompt", "when": {"probe": "flat", "threshold": 0.5}},
        {"name": "windowed", "scope": "prompt", "when": {
            "feature": feature, "threshold": rule_cut, "window": {"size": 3, "agg": "mean"}}},
        {"name": "compound", "scope": "prompt", "when": {"any": [
            {"feature": feature, "threshold": rule_cut}, {"feature": other, "threshold": 1.0}]}},
        {"name": "later", "scope": "generation", "when": {"feature": feature, "threshold": 0.0}},
    ], "policies": [{"name": "default", "rules": ["*"]}]}
    (sae_dir / "rules.yaml").write_text(yaml.safe_dump(pack, sort_keys=False))
    data = root / "data.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": y, "group": f"g{i % 2}"}) + "\n"
                            for i, (t, y) in enumerate(zip(TEXTS, labels, strict=True))))
    return {"model": model, "sae": sae_dir, "encoder": encoder, "values": values,
            "labels": labels, "rule_cut": rule_cut, "data": data, "root": root}


def test_planted_signals_give_known_aurocs(planted: dict) -> None:
    monitor = load_monitor(planted["sae"])
    items = read_labelled(planted["data"])
    rows = encode_cached(planted["encoder"], planted["model"], [i.text for i in items], None)
    signals = [text_signals(monitor, r, "prompt") for r in rows]
    got = {(d.kind, d.name): d for d in evaluate(monitor, items, signals, "prompt",
                                                 bootstrap=200, seed=1)}
    rule = got["rule", "planted"]
    assert rule.auroc == 1.0 and rule.auroc_ci95 == (1.0, 1.0)
    assert got["probe", "planted"].auroc == 1.0
    assert got["probe", "planted"].recall == 1.0 and got["probe", "planted"].fpr == 0.0
    flat = got["probe", "flat"]
    assert flat.auroc == 0.5 and flat.recall == 0.0 and flat.fpr == 0.0
    assert got["rule", "flat"].auroc == 0.5
    assert rule.recall_at_1pct_fpr == 1.0
    # Hand-computed: the rule fires where the feature's max is above its threshold.
    values, labels, cut = planted["values"], planted["labels"], planted["rule_cut"]
    pos = [v for v, y in zip(values, labels, strict=True) if y]
    neg = [v for v, y in zip(values, labels, strict=True) if not y]
    assert rule.recall == pytest.approx(sum(v > cut for v in pos) / len(pos))
    assert rule.fpr == pytest.approx(sum(v > cut for v in neg) / len(neg))
    assert 0 < rule.fpr < 1
    assert {g.group for g in rule.groups} == {"g0", "g1"}
    for g in rule.groups:
        assert g.n_pos + g.n_neg == len(values) // 2
    assert not got["rule", "later"].evaluated and "generation" in got["rule", "later"].note
    assert got["rule", "compound"].evaluated


def test_a_prompt_is_read_with_the_text_but_scored_only_in_prompt_scope(planted: dict) -> None:
    """A completion's prompt: its rows come first, as prompt tokens. A generation rule scores
    only the completion's tokens, so a signal planted in the prompt does not count for it."""
    monitor = load_monitor(planted["sae"])
    values = planted["values"]
    hot = TEXTS[max(range(len(values)), key=values.__getitem__)]  # the feature's highest text
    cold = TEXTS[min(range(len(values)), key=values.__getitem__)]
    encoder = planted["encoder"]
    (rows,) = encode_cached(encoder, planted["model"], [hot + cold], None)
    n_prompt = len(encoder.token_ids(hot))
    as_prompt = text_signals(monitor, rows, "generation", n_prompt)
    whole = text_signals(monitor, rows, "generation")
    # "later" (scope generation) sees the cold completion only; "planted" (both) sees all.
    assert as_prompt.rule_scores["later"] < whole.rule_scores["later"]
    assert as_prompt.rule_scores["planted"] == whole.rule_scores["planted"]
    assert as_prompt.probe_scores["planted"] < whole.probe_scores["planted"]
    with pytest.raises(EvaluationError, match="n_prompt"):
        text_signals(monitor, rows, "generation", rows.shape[0])


def test_jsonl_prompts_are_read(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": " return a + b", "label": 0, "prompt": "def add(a, b):\\n"}\n'
                    '{"text": "x", "label": 1}\n')
    first, second = read_labelled(path)
    assert first.prompt == "def add(a, b):\n" and first.full_text == "def add(a, b):\n return a + b"
    assert second.prompt == "" and second.full_text == "x"
    path.write_text('{"text": "a", "label": 0, "prompt": 3}\n')
    with pytest.raises(EvaluationError, match=r"data\.jsonl:1: 'prompt' must be a string"):
        read_labelled(path)


def test_bad_jsonl_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "a", "label": 0}\n\n{"text": "b", "label": 2}\n')
    with pytest.raises(EvaluationError, match=r"data\.jsonl:3: 'label' must be 0 or 1"):
        read_labelled(path)
    path.write_text('{"text": "a", "label": 1}\n{"text": "b", label: 0}\n')
    with pytest.raises(EvaluationError, match=r"data\.jsonl:2: not JSON"):
        read_labelled(path)


def test_calibrate_meets_the_target_fpr(planted: dict, tmp_path: Path) -> None:
    monitor = load_monitor(planted["sae"])
    benign = [t for t, y in zip(TEXTS, planted["labels"], strict=True) if not y]
    rows = encode_cached(planted["encoder"], planted["model"], benign, None)
    signals = [rule_signals(monitor.sae, monitor.engine, monitor.probes, r) for r in rows]
    pack, report = calibrate(monitor, signals, 0.25, "prompt")
    by = {r.rule: r for r in report.rules}
    allowed = math.floor(0.25 * len(benign))
    for name in ("planted", "windowed", "flat"):
        assert by[name].changed and by[name].fpr_after is not None
        assert by[name].fpr_after <= 0.25
    assert by["planted"].fpr_after == allowed / len(benign)  # distinct maxima: tight
    assert not by["compound"].changed and "compound" in by["compound"].reason
    assert not by["later"].changed
    new = {r.name: r for r in pack.rules}["planted"].when.signal
    assert new is not None
    neg = sorted((v for v, y in zip(planted["values"], planted["labels"], strict=True) if not y),
                 reverse=True)
    assert neg[allowed] <= new.threshold + 1e-4 and new.threshold < neg[allowed - 1]
    loaded = load_rule_pack(dump_pack(pack, "calibrated"))
    assert [r.name for r in loaded.rules] == [r.name for r in monitor.pack.rules]
    assert loaded == pack


def test_cli_eval_and_calibrate(planted: dict, tmp_path: Path,
                                capsys: pytest.CaptureFixture) -> None:
    common = ["--model", str(planted["model"]), "--sae", str(planted["sae"]),
              "--cache", str(tmp_path / "cache"), "--quiet"]
    out = tmp_path / "report.json"
    assert main(["eval", str(planted["data"]), "--out", str(out), "--bootstrap", "50",
                 *common]) == 0
    report = json.loads(out.read_text())
    rule = next(d for d in report["detectors"] if d["name"] == "planted" and d["kind"] == "rule")
    assert rule["auroc"] == 1.0
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cached = list((tmp_path / "cache").rglob("*.safetensors"))
    assert len(cached) == len(TEXTS)
    assert main(["eval", str(planted["data"]), "--out", str(tmp_path / "again.json"),
                 "--bootstrap", "50", *common]) == 0
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["detectors"] == report["detectors"]
    benign = tmp_path / "benign.txt"
    benign.write_text("\n".join(t.replace("\n", " ") for t in TEXTS[:8]))
    pack = tmp_path / "calibrated.yaml"
    assert main(["calibrate", str(benign), "--target-fpr", "0.125", "--out", str(pack),
                 *common]) == 0
    assert load_rule_pack(pack.read_text()).rules
    assert json.loads(pack.with_suffix(".json").read_text())["target_fpr"] == 0.125
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "x"}\n')
    assert main(["eval", str(bad), *common]) == 1
    assert "bad.jsonl:1" in capsys.readouterr().err


def test_calibrated_description_notes_the_threshold_once() -> None:
    from latentguard.lab.calibration import calibrated_description

    once = calibrated_description("fires on X; held-out AUROC 0.9", 2.5, 1.0, 0.005, 2400)
    assert once == ("fires on X; held-out AUROC 0.9 [threshold 2.5 set by latentguard calibrate "
                    "at 0.50% FPR on 2400 benign texts; was 1]")
    twice = calibrated_description(once, 3.0, 2.5, 0.01, 100)
    assert twice.count("latentguard calibrate") == 1 and twice.endswith("was 2.5]")
    assert calibrated_description("", 1.0, 2.0, 0.01, 5).startswith("[threshold 1 ")
