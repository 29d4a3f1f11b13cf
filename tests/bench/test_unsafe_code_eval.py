"""bench/unsafe_code_eval.py end to end on the tiny model (the numbers mean nothing there)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bench import unsafe_code_eval as uce
from bench.common import Heldout, load_split
from latentguard.lab.activations import TextEncoder
from latentguard.lab.tinymodel import build_tiny_model, build_tiny_sae
from latentguard.monitors.catalog import FeatureCatalog
from latentguard.monitors.probes import ProbeSet
from latentguard.monitors.rules import load_rule_pack

UNSAFE = ["os.system(cmd)", "eval(input())", "pickle.loads(data)", "subprocess.call(c, shell=True)",
          "exec(code)", "hashlib.md5(pw)"]
CLEAN = ["def add(a, b):\n    return a + b", "x = [i for i in range(3)]", "print('hello')",
         "return self.value", "for k in d:\n    total += d[k]", "name = name.strip()",
         "if a > b:\n    a, b = b, a", "import math\nmath.sqrt(2)"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("uce")
    rows = []
    for i, (text, label) in enumerate([(t, 1) for t in UNSAFE] + [(t, 0) for t in CLEAN]):
        rows.append({"id": f"f{i}.py:1:f", "source": f"f{i}.py", "text": text, "label": label,
                     "split": "heldout" if i % 2 else "train", "bandit": [], "flagged": []})
    path = root / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_eval_end_to_end(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # the table's headers on one line each
    model = build_tiny_model(tmp_path / "model")
    sae = build_tiny_sae(tmp_path / "sae", layer=1)
    out = tmp_path / "out"
    assert uce.main(["--model", str(model), "--sae", str(sae), "--layer", "1", "--data",
                     str(data), "--out", str(out), "--batch", "4",
                     "--heldout-max", "3", "3"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["n"] == {"train": {"unsafe": 3, "clean": 4}, "heldout": {"unsafe": 3, "clean": 3}}
    for who in ("rule", "probe", "probe_max"):
        for key, value in m[who]["heldout"].items():
            if not key.startswith("threshold"):
                assert 0.0 <= value <= 1.0, (who, key, value)
        assert 0.0 <= m[who]["train_auroc"] <= 1.0
    assert m["probe"]["train_auroc"] == 1.0  # 64 dimensions, 7 points: separable
    assert set(m["probe"]["l2_cv_auroc"]) == {"0.0001", "0.001", "0.01", "0.1", "1"}
    assert set(m["probe_max"]["l2_cv_auroc"]) == set(m["probe"]["l2_cv_auroc"])
    pack = load_rule_pack((out / "rules.yaml").read_text())
    rules = {r.name: r for r in pack.rules}
    probe_rule, feature_rule = rules["unsafe-code"], rules["unsafe-code-feature"]
    assert probe_rule.when.signal is not None and feature_rule.when.signal is not None
    assert probe_rule.action.type == "block" and feature_rule.action.type == "alert"
    assert probe_rule.when.signal.probe == "unsafe-code"
    assert probe_rule.when.signal.window is None  # max over tokens: any token above it
    assert probe_rule.when.signal.threshold == pytest.approx(m["probe_max"]["threshold"],
                                                             rel=1e-5)
    assert feature_rule.when.signal.feature == m["rule"]["feature"]
    assert feature_rule.when.signal.threshold == pytest.approx(m["rule"]["threshold"], rel=1e-5)
    probes = ProbeSet.load(out / "probes", d_in=64, d_sae=256)
    assert probes.names == ["unsafe-code-sae", "unsafe-code"]  # sorted by file name
    weighted = m["rule_weighted"]
    assert 1 <= len(weighted["weights"]) <= weighted["n_features"]
    assert set(weighted["n_features_cv_auroc"]) == {"16", "32", "64", "128"}
    sae_probe = probes.probe("unsafe-code-sae")
    assert sae_probe.meta.input == "features"
    assert sorted(f for f, _ in sae_probe.weights()) == sorted(
        w["feature"] for w in weighted["weights"])
    sae_rule = rules["unsafe-code-sae"]
    assert sae_rule.when.signal is not None and sae_rule.when.signal.probe == "unsafe-code-sae"
    assert sae_rule.when.signal.threshold == pytest.approx(weighted["threshold"], rel=1e-5)
    probe = probes.probe("unsafe-code")
    assert probe.meta.layer == 1
    assert probe.meta.bias == pytest.approx(m["probe_max"]["bias"])
    shown = capsys.readouterr().out
    assert "SAE rule (feature" in shown
    assert f"SAE rule: {len(weighted['weights'])} weighted features" in shown
    catalog = FeatureCatalog.load(out / "features.json", d_sae=256)
    assert catalog.get(m["rule"]["feature"]).label == "unsafe Python code (bandit)"


def test_per_test_features_and_catalog() -> None:
    pytest.importorskip("bandit")  # test names
    gen = torch.Generator().manual_seed(0)
    feats = torch.rand(60, 12, generator=gen) * 0.1
    flagged = [["B301"] if i < 12 else ["B102", "B102"] if i < 24 else [] for i in range(60)]
    y = torch.tensor([int(bool(f)) for f in flagged])
    feats[:12, 5] += 1.0  # pickle snippets
    feats[12:24, 7] += 1.0  # exec snippets
    t_feats, t_flagged = feats[:40].clone(), flagged[:40]
    t_y = y[:40]
    per_test = uce.per_test_features((feats, y, flagged), (t_feats, t_y, t_flagged))
    got = {t.test: t for t in per_test}
    assert got["B301"].feature == 5 and got["B301"].name == "pickle"
    assert got["B102"].feature == 7 and got["B102"].name == "exec_used"
    assert got["B301"].train_auroc == 1.0 and got["B301"].heldout_auroc == 1.0
    rule = uce.FeatureRule(feature=5, train_auroc=0.9, threshold=0.5,
                           train_recall_at_threshold=0.5,
                           heldout=Heldout(0.8, 0.1, 0.5, 0.1, 0.01))
    entries = {e["index"]: e for e in uce.catalog_entries(rule, per_test, "")}
    assert entries[5]["label"] == "unsafe Python code (bandit); pickle (B301)"
    assert entries[7]["label"] == "exec_used (B102)" and "B102" in entries[7]["tags"]


def test_cached_rows_skip_the_model(data: Path, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    model = build_tiny_model(tmp_path / "model")
    sae = build_tiny_sae(tmp_path / "sae", layer=1)
    args = ["--model", str(model), "--sae", str(sae), "--data", str(data), "--cache",
            str(tmp_path / "cache")]
    assert uce.main([*args, "--out", str(tmp_path / "a")]) == 0
    assert (tmp_path / "cache" / "heldout.safetensors").is_file()

    def no_model(*_a: object, **_k: object) -> None:
        raise AssertionError("the model was loaded despite the cache")

    monkeypatch.setattr(TextEncoder, "load", no_model)
    assert uce.main([*args, "--out", str(tmp_path / "b")]) == 0
    first, second = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in "ab")
    for key in ("rule", "probe", "probe_max"):
        assert first[key] == second[key]
    with pytest.raises(AssertionError, match="despite the cache"):  # other settings: recompute
        uce.main([*args, "--out", str(tmp_path / "c"), "--max-tokens", "3"])


def test_missing_positives_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"id": "a", "text": "x", "label": 0, "split": "train"}) + "\n")
    with pytest.raises(SystemExit, match="needs both"):
        load_split(path, "train", None, None, 0)


def test_any_rule_covers_several_kinds_of_unsafe_code() -> None:
    gen = torch.Generator().manual_seed(0)

    def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        feats = torch.rand(n, 8, generator=gen) * (torch.rand(n, 8, generator=gen) < 0.2)
        kind = torch.arange(n) % 4  # 0: pickle-like, 1: exec-like, 2-3: clean
        feats[kind == 0, 2] += 2.0
        feats[kind == 1, 6] += 2.0
        return feats, (kind < 2).long()

    (feats, y), (t_feats, t_y) = sample(400), sample(200)
    got = uce.any_rule((feats, y), (t_feats, t_y), [2, 6, 2])
    assert got is not None
    assert [f.feature for f in got.features] == [2, 6]
    assert got.train_fpr_at_threshold <= 0.01
    assert got.heldout.auroc > 0.99 and got.heldout.recall_at_train_threshold > 0.95
    single = uce.auroc(t_feats[t_y == 1, 2], t_feats[t_y == 0, 2])
    assert float(single) < 0.8  # one feature sees half of the unsafe snippets
    assert uce.any_rule((feats, y), (t_feats, t_y), []) is None
