"""Leave-one-situation-out on planted data: the held-out situation is never fit on, the
baseline sees words only, and a bad line names its file and line."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from bench import deception_loso as dl


def _rows(n_situations: int = 3, pairs: int = 12) -> list[dl.DeceptionText]:
    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(40)]
    out = []
    for s in range(n_situations):
        for p in range(1, pairs + 1):
            for label in (0, 1):
                text = " ".join(rng.choice(vocab) for _ in range(12))
                out.append(dl.DeceptionText(id=f"s{s}/{p}/{'hd'[label]}", situation=f"s{s}",
                                            pair=p, kind="matched", label=label, voice="x",
                                            text=text))
    return out


def test_planted_residual_direction_is_found_held_out_and_words_are_chance(tmp_path: Path
                                                                           ) -> None:
    data = _rows()
    gen = torch.Generator().manual_seed(0)
    planted = torch.randn(16, generator=gen)
    rows = []
    for r in data:
        x = torch.randn(5, 16, generator=gen)
        if r.label:
            x[2] += 3 * planted  # one token carries it, as a lie carried by one phrase
        rows.append(x)
    dets = dl.detectors(data, rows, None, 0)
    res = dl.leave_one_situation_out(data, dets)
    assert [s.name for s in res] == ["s0", "s1", "s2"]
    summary = dl.summarize(res)
    assert summary["probe-max"].mean_auroc > 0.95
    assert summary["probe-mean"].mean_auroc > 0.9
    assert 0.25 < summary["bow"].mean_auroc < 0.75  # random words: no signal
    assert summary["probe-max"].ships and not summary["bow"].ships
    # The shipped probe: refit on everything, saved, loads, and separates the classes.
    from latentguard.monitors.probes import Probe

    dl.final_probes(data, rows, 9, tmp_path)
    probe = Probe.load(tmp_path / "deception.json")
    assert probe.meta.layer == 9 and "check: end" in probe.meta.description
    score = torch.stack([r.mean(0) for r in rows]) @ probe.direction + probe.meta.bias
    y = torch.tensor([r.label for r in data])
    assert score[y == 1].mean() > score[y == 0].mean()


def test_a_detector_that_only_matches_the_baseline_does_not_ship() -> None:
    s = [dl.Situation("a", 10, {"bow": 0.85, "probe-max": 0.9}, {}, {}, {}),
         dl.Situation("b", 10, {"bow": 0.85, "probe-max": 0.9}, {}, {}, {})]
    summary = dl.summarize(s)
    assert summary["probe-max"].mean_auroc == pytest.approx(0.9)
    assert not summary["probe-max"].ships  # 0.05 over the words, not 0.1


def test_bag_of_words_uses_only_the_fitting_texts_vocabulary() -> None:
    vec = dl.BagOfWords.fit(["the car was fine", "the car was hit"], min_count=2)
    assert set(vec.vocab) == {"the", "car", "was", "the car", "car was"}
    x = vec(["a car was hit", "nothing here"])
    assert x[0].sum() == 3 and x[1].sum() == 0


def test_bad_line_names_file_and_line(tmp_path: Path) -> None:
    good = _rows(1, 1)[0].model_dump()
    (tmp_path / "s0.jsonl").write_text(json.dumps(good) + "\n" + json.dumps(good | {"label": 2})
                                       + "\n", encoding="utf-8")
    with pytest.raises(SystemExit, match=r"s0\.jsonl:2: label"):
        dl.read_data(tmp_path)
    (tmp_path / "s0.jsonl").write_text(json.dumps(good | {"situation": "other"}) + "\n")
    with pytest.raises(SystemExit, match=r"s0\.jsonl:1: situation"):
        dl.read_data(tmp_path)


def test_shipped_data_has_sixteen_situations_of_matched_and_instructed_pairs() -> None:
    data = dl.read_data()
    by = {}
    for r in data:
        by.setdefault(r.situation, []).append(r)
    assert len(by) >= 10
    matched = sum(1 for r in data if r.kind == "matched" and r.label == 1)
    assert matched >= 600
    for rows in by.values():
        pairs = {(r.pair, r.label) for r in rows}
        assert len(pairs) == len(rows)  # each pair exactly one honest, one deceptive text
        assert {p for p, _ in pairs if (p, 0) in pairs} == {p for p, _ in pairs}


def test_window_mean_max_is_the_rule_engines_running_mean() -> None:
    from latentguard.monitors.rules.schema import Window
    from latentguard.monitors.rules.windows import make_window

    gen = torch.Generator().manual_seed(1)
    scores = torch.randn(50, generator=gen, dtype=torch.float64)
    agg = make_window(Window(size=8, agg="mean"))
    engine = max(agg.push(float(v), i)[0] for i, v in enumerate(scores))
    assert float(dl.window_mean_max(scores, 8)) == pytest.approx(engine, rel=1e-12)


def test_benign_thresholds_fire_on_one_percent_and_give_recall_held_out() -> None:
    """A planted direction that benign text also carries: the threshold set on the benign
    texts (inside each fold) is above most of it, so recall is what a reviewer would see."""
    data = _rows()
    gen = torch.Generator().manual_seed(0)
    planted = torch.randn(16, generator=gen)
    rows = []
    for r in data:
        x = torch.randn(5, 16, generator=gen)
        x += (2.0 if r.label else 0.0) * planted
        rows.append(x)
    benign_rows = [torch.randn(5, 16, generator=gen) + 1.0 * planted for _ in range(300)]
    benign = dl.Benign([f"b{i}" for i in range(300)], benign_rows)
    res = dl.leave_one_situation_out(data, dl.detectors(data, rows, None, 0, benign))
    summary = dl.summarize(res)
    s = summary["probe-mean"]
    assert s.mean_auroc > 0.95
    # The benign texts sit halfway: the 1% threshold is above nearly all honest texts and
    # below most deceptive ones.
    assert s.recall_at_benign_fpr is not None and s.recall_at_benign_fpr > 0.5
    assert s.honest_fpr_at_benign_fpr is not None and s.honest_fpr_at_benign_fpr < 0.05
    assert all("probe-max" in sit.recall_at_benign_fpr for sit in res)


def test_benign_threshold_is_the_one_percent_point() -> None:
    scores = torch.arange(200, dtype=torch.float64)  # 0..199
    t = dl.benign_threshold(scores, 0.01)
    assert int((scores > t).sum()) == 2 and t == 197.0
    assert int((torch.arange(50.0) > dl.benign_threshold(torch.arange(50.0), 0.01)).sum()) == 0


def test_end_rule_is_a_valid_alert_checked_at_the_end() -> None:
    from latentguard.monitors.rules import validate_rule

    s = dl.Summary(0.83, (0.78, 0.87), 0.14, True, 0.4, 0.02)
    rule = validate_rule(dl.end_rule(s, 1.25, "fit.jsonl"))
    assert rule.check == "end" and rule.action.type == "alert"
    assert rule.when.signal.window.size is None and rule.when.signal.threshold == 1.25
    assert "40% of the held-out" in rule.description and "+0.140" in rule.description
