"""The bandit-labelled unsafe-code data set builder (bench/unsafe_code_data.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import unsafe_code_data as ucd

pytest.importorskip("bandit")

UNSAFE = "import os\n\ndef run(x):\n    os.system(x)\n"
CLEAN = "def add(a, b):\n    return a + b\n"


def test_bandit_labels_known_snippets() -> None:
    snippets = [ucd.Snippet(id=str(i), source="x.py", text=t)
                for i, t in enumerate([UNSAFE, CLEAN, "import hashlib\nhashlib.md5(b'x')\n",
                                       "try:\n    f()\nexcept Exception:\n    pass\n",
                                       "def broken(:\n"])]
    got = {s.id: s for s in ucd.label(snippets)}
    assert "4" not in got  # bandit cannot parse it: dropped
    assert (got["0"].label, got["0"].flagged, got["0"].severity) == (1, ["B605"], "HIGH")
    assert (got["1"].label, got["1"].bandit, got["1"].severity) == (0, [], None)
    assert got["2"].label == 1 and got["2"].flagged == ["B324"]
    # Low severity only (B110 try/except/pass): clean at the default floor, kept in the ids.
    assert (got["3"].label, got["3"].bandit, got["3"].severity) == (0, ["B110"], "LOW")
    low = [ucd.Snippet(id="3", source="x.py", text=snippets[3].text)]
    assert ucd.label(low, min_severity="low")[0].label == 1


def test_build_extracts_functions_and_splits_by_file(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text(
        "import os\n\n" + UNSAFE + "\nclass C:\n    def m(self):\n        x = 1\n"
        "        return eval(x)\n\n\ndef short(): pass\n")
    (tmp_path / "b.py").write_text(CLEAN.replace("return", "c = a\n    return") + "\n" + UNSAFE)
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "t.py").write_text("def t(v):\n    w = v\n    return eval(w)\n")
    snippets = ucd.build(tmp_path, min_lines=2, heldout_percent=50)
    by_id = {s.id: s for s in snippets}
    # Files in sorted order: pkg/a.py's copy of run() duplicates b.py's and is dropped.
    assert set(by_id) == {"b.py:1:add", "b.py:7:run", "pkg/a.py:9:C.m", "test/t.py:1:t"}
    assert by_id["pkg/a.py:9:C.m"].text.startswith("def m(self):\n    x = 1")  # dedented
    assert [by_id[i].label for i in sorted(by_id)] == [0, 1, 1, 1]
    for s in snippets:
        assert s.split == ucd.split_of(s.source, 50)
    assert {ucd.split_of(f"f{i}.py", 20) for i in range(50)} == {"train", "heldout"}
    assert "test/t.py:1:t" not in {s.id for s in ucd.build(tmp_path, min_lines=2, tests=False)}
    out = tmp_path / "out.jsonl"
    assert ucd.main(["--source", str(tmp_path / "pkg"), "--out", str(out), "--min-lines", "2"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["id"] for r in rows} == {"a.py:5:run", "a.py:9:C.m"}
    assert set(rows[0]) >= {"text", "label", "bandit", "flagged", "split", "source"}
