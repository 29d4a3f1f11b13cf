"""Model-written code data: heads cut before the flagged line, per split and package, and
bandit's verdict on what the model completed (no model needed: completions are given)."""

from __future__ import annotations

from bench import model_code as mc

UNSAFE = "def run(cmd):\n    log(cmd)\n    subprocess.call(cmd, shell=True)\n    return 1\n"
CLEAN = "def add(a, b):\n    total = a + b\n    check(total)\n    return total\n"


def _rows() -> list[dict]:
    rows = []
    for split, packages in (("train", ["a", "b"]), ("heldout", ["c"])):
        for p in packages:
            for i in range(3):
                rows.append({"id": f"{p}/u{i}", "group": p, "split": split, "label": 1,
                             "text": UNSAFE.replace("run", f"run{i}")})
                rows.append({"id": f"{p}/c{i}", "group": p, "split": split, "label": 0,
                             "text": CLEAN.replace("add", f"add{i}")})
    return rows


def test_heads_stay_in_their_split_and_cut_before_the_flagged_line() -> None:
    heads = mc.select_heads(_rows(), "heldout", per_package=2, seed=0)
    assert {h["group"] for h in heads} == {"c"}
    flagged = [h for h in heads if h["head_label"] == 1]
    clean = [h for h in heads if h["head_label"] == 0]
    assert len(flagged) == 2 and len(clean) == 2  # capped per package and label
    for h in flagged:
        assert h["cut"] == 3 and h["prompt"].endswith("log(cmd)\n    ")
        assert "shell=True" not in h["prompt"]
    train = mc.select_heads(_rows(), "train", per_package=5, seed=0)
    assert {h["group"] for h in train} == {"a", "b"} and len(train) == 12


def test_function_end_stops_at_code_after_the_function() -> None:
    head = "def f(x):\n    y = 1\n    "
    assert mc.function_end(head, "return y\n\nprint(f(2))\n") == "return y\n\n"
    assert mc.function_end(head, "z = 2\n    return z\n") == "z = 2\n    return z\n"
    method = "    def g(self):\n        "
    assert mc.function_end(method, "return 1\n    def h(self):\n") == "return 1\n"


def test_completions_are_labelled_by_what_the_model_wrote() -> None:
    heads = [{"id": "x", "group": "p", "kind": "cli", "head_label": 1, "cut": 3,
              "prompt": "def run(cmd):\n    log(cmd)\n    "}] * 3
    rows = mc.label_completions(heads, [
        "subprocess.call(cmd, shell=True)\n",  # unsafe again
        "subprocess.call([cmd])\n",  # the model wrote it safely
        ")))(((\n",  # nothing past the head parses: the head alone is judged
    ])
    assert [r["label"] for r in rows] == [1, 0, 0]
    assert rows[0]["bandit"] == ["B602"] and rows[0]["prompt"] == heads[0]["prompt"]
    assert rows[0]["text"] == "subprocess.call(cmd, shell=True)\n"
    summary = mc.summarise({"heldout": rows})
    assert summary["heldout"]["from_flagged_heads"] == {"completions": 3, "unsafe": 1}
