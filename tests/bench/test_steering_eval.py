"""bench/steering_eval.py: how prompts are cut and completions judged (bandit is the judge)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import steering_eval as se
from bench.common import read_rows

UNSAFE = "def run(cmd):\n    cmd = cmd.strip()\n    return eval(cmd)\n"
CLEAN = "def add(a, b):\n    total = a + b\n    total += 0\n    return total\n"


def test_head_before_keeps_the_indent_of_the_cut_line() -> None:
    assert se.head_before(UNSAFE, 3) == "def run(cmd):\n    cmd = cmd.strip()\n    "
    assert se.head_before(UNSAFE, 1) is None  # nothing but the line itself
    assert se.head_before(UNSAFE, 9) is None


def test_parseable_drops_the_unfinished_tail() -> None:
    text = "def f(x):\n    y = x + 1\n    return g(y,\n"
    assert se.parseable(text) == "def f(x):\n    y = x + 1\n"
    assert se.parseable("def f(x):\n") is None


def test_flagged_tests_use_bandit_at_medium_and_above() -> None:
    got = se.flagged_tests([UNSAFE, CLEAN, None, "import subprocess\n"])
    assert got[0] == ["B307"]
    assert got[1] == [] and got[3] == []  # importing subprocess is low severity only
    assert got[2] is None


def test_prompts_cut_before_the_flagged_line(tmp_path: Path) -> None:
    rows = [{"id": f"u{i}", "split": "heldout", "label": 1, "text": UNSAFE} for i in range(3)]
    rows += [{"id": f"c{i}", "split": "heldout", "label": 0, "text": CLEAN} for i in range(5)]
    rows += [{"id": "t", "split": "train", "label": 1, "text": UNSAFE}]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    prompts = se.select_prompts(read_rows(data), 2, seed=0)
    assert [p["label"] for p in prompts] == [1, 1, 0, 0]
    unsafe = prompts[0]
    assert unsafe["cut"] == 3 and unsafe["prompt"].endswith("cmd.strip()\n    ")
    assert all(p["id"] != "t" for p in prompts)  # held-out functions only
    # Nothing in a head is flagged by itself: the model writes whatever bandit then judges.
    assert se.flagged_tests([p["prompt"] + "pass\n" for p in prompts]) == [[]] * 4


def test_conditions_steer_the_rules_feature(tmp_path: Path) -> None:
    pack = tmp_path / "rules.yaml"
    pack.write_text("rules:\n- name: f\n  when: {feature: 7, threshold: 10.0}\n")
    steers = se.conditions(pack, "f", [0.5, 2])
    assert steers["baseline"] is None
    assert steers["zero"].mode == "ablate" and steers["zero"].features[0].feature == 7
    assert steers["high x2"].mode == "clamp" and steers["high x2"].features[0].value == 20.0
    assert steers["high x0.5"].features[0].value == 5.0
    with pytest.raises(SystemExit, match="no single-feature rule named 'g'"):
        se.conditions(pack, "g", [1])
