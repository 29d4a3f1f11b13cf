"""The third-party corpus builder, offline: a fake wheel stands in for PyPI, so the pinning,
labelling and package split are checked without the network (fetch only downloads a file that
is not already in the downloads folder)."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import pytest

from bench import code_corpus
from bench.code_corpus import Source

UNSAFE = '''import subprocess


def run(cmd):
    """Run a shell command."""
    return subprocess.call(cmd, shell=True)
'''

SAFE = '''def add(a, b):
    """Add two numbers."""
    total = a + b
    return total


class Box:
    def size(self):
        n = len(self.items)
        return n
'''


def fake_wheel(folder: Path, name: str) -> Path:
    """A wheel holding two modules: one with a shell=True call, one without."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name}/shell.py", UNSAFE)
        z.writestr(f"{name}/maths.py", SAFE)
    return path


def write_manifest(tmp: Path, names: list[str], kinds: list[str]) -> tuple[Path, Path]:
    downloads = tmp / "cache" / "downloads"
    entries = []
    for name, kind in zip(names, kinds, strict=True):
        wheel = fake_wheel(downloads, name)
        entries.append({"package": name, "version": "1.0", "filename": wheel.name,
                        "sha256": hashlib.sha256(wheel.read_bytes()).hexdigest(), "kind": kind})
    manifest = tmp / "sources.json"
    manifest.write_text(json.dumps({"packages": entries}))
    return manifest, tmp / "cache"


def test_extracts_labels_and_splits_by_package(tmp_path: Path) -> None:
    names = ["pkga", "pkgb", "pkgc", "pkgd"]
    manifest, cache = write_manifest(tmp_path, names, ["web", "web", "cli", "cli"])
    sources = code_corpus.load_manifest(manifest)
    rows = code_corpus.build(sources[:1], cache, jobs=1)
    by_name = {r["id"].rsplit(":", 1)[1]: r for r in rows}
    assert set(by_name) == {"run", "add", "Box.size"}
    assert by_name["run"]["label"] == 1
    assert "B602" in by_name["run"]["test_ids"]
    assert by_name["add"]["label"] == 0 and by_name["Box.size"]["label"] == 0
    assert {r["group"] for r in rows} == {"pkga"} and {r["kind"] for r in rows} == {"web"}

    # identical wheels: every function after the first package's is an exact duplicate
    assert len(code_corpus.build(sources, cache, jobs=1)) == 3

    splits = code_corpus.split_packages(sources, 0.3, seed=0)
    assert set(splits) == set(names)
    for kind in ("web", "cli"):
        members = [s.package for s in sources if s.kind == kind]
        assert sorted(splits[m] for m in members) == ["heldout", "train"]
    paths = code_corpus.write_rows(
        [dict(r, group=g, split=splits[g]) for g in names for r in rows], tmp_path / "out")
    groups = {name: {json.loads(line)["group"] for line in paths[name].read_text().splitlines()}
              for name in ("train", "heldout")}
    assert groups["train"] and groups["heldout"] and not groups["train"] & groups["heldout"]


def test_hash_mismatch_is_refused_naming_the_package(tmp_path: Path) -> None:
    manifest, cache = write_manifest(tmp_path, ["pkga"], ["web"])
    (source,) = code_corpus.load_manifest(manifest)
    bad = Source(**{**source.__dict__, "sha256": "0" * 64})
    with pytest.raises(ValueError, match="pkga 1.0: sha256 .* refusing"):
        code_corpus.build([bad], cache, jobs=1)


@pytest.mark.parametrize("name", ["django", "Django-Rest-Framework", "Twisted", "ansible_core"])
def test_reserved_package_in_manifest_is_refused(tmp_path: Path, name: str) -> None:
    manifest, _ = write_manifest(tmp_path, ["pkga"], ["web"])
    data = json.loads(manifest.read_text())
    data["packages"].append({**data["packages"][0], "package": name})
    manifest.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="reserved"):
        code_corpus.load_manifest(manifest)


def test_shipped_manifest_is_pinned_and_clean() -> None:
    sources = code_corpus.load_manifest(code_corpus.MANIFEST)
    assert len(sources) >= 150
    assert all(len(s.sha256) == 64 and s.version and s.kind for s in sources)
    split = code_corpus.split_packages(sources)
    assert sum(v == "heldout" for v in split.values()) >= 0.3 * len(sources)
