"""The text sources' roles and the passage cutter (pure; no source is read)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from latentguard.lab import corpora
from latentguard.lab.corpora import SOURCES, html_text, passages, source
from latentguard.lab.errors import LabError


def test_heldout_sources_never_enter_the_sae_mix() -> None:
    names = [s.name for s in SOURCES]
    assert len(names) == len(set(names))
    for s in SOURCES:
        assert s.role in ("fit", "heldout")
        if s.role == "heldout":
            assert s.sae_mb == 0, s.name
    kinds = {(s.kind, s.role) for s in SOURCES}
    # Each kind is both trained on and measured on other authors' text.
    for kind in ("code", "prose", "chat"):
        assert (kind, "fit") in kinds and (kind, "heldout") in kinds


def test_unknown_source_names_the_known_ones() -> None:
    with pytest.raises(LabError, match="known: stdlib"):
        source("wikipedia")


def test_passages_merge_short_paragraphs_and_cut_long_ones() -> None:
    text = "tiny\n\n" + "a" * 50 + "\n\n" + "b" * 50 + "\n\n" + "\n".join(["c" * 60] * 30)
    out = list(passages(text, min_chars=80, max_chars=300))
    assert out[0] == "tiny\n\n" + "a" * 50 + "\n\n" + "b" * 50
    assert all(len(p) <= 300 for p in out)
    assert "".join(out[1:]).replace("\n", "") == "c" * 1800
    assert list(passages("too short", min_chars=80)) == []


def test_html_text_keeps_visible_text_only() -> None:
    markup = ("<html><head><title>T</title><style>p{}</style></head><body><nav>menu</nav>"
              "<h1>Title</h1><p>One   two.</p><script>x()</script><p>Three</p></body></html>")
    assert html_text(markup) == "Title\n\nOne two.\n\nThree"


def _fake(name: str, role: str, n: int, size: int, sae_mb: float = 0.0) -> corpora.TextSource:
    def read(_cache: Path) -> Iterator[corpora.Document]:
        for i in range(n):
            yield corpora.Document(f"{name}/{i}", f"{name} {i} " + "x" * size)
    return corpora.TextSource(name, "prose", role, "test", read, sae_mb=sae_mb)  # type: ignore[arg-type]


def test_sae_corpus_takes_fit_sources_within_their_budget(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(corpora, "SOURCES", (
        _fake("a", "fit", 50, 1000, sae_mb=0.01), _fake("b", "fit", 5, 100, sae_mb=1),
        _fake("held", "heldout", 50, 1000)))
    summary = corpora.write_sae_corpus(tmp_path, cache=tmp_path)
    assert set(summary) == {"a", "b"}  # a held-out source never enters the mix
    assert summary["a"]["bytes"] <= 10_000 and summary["a"]["documents"] == 9
    assert summary["b"]["documents"] == 5
    assert len(list((tmp_path / "a").iterdir())) == 9
    again = tmp_path / "again"
    corpora.write_sae_corpus(again, cache=tmp_path)  # seeded: the same documents again
    assert sorted(p.read_text() for p in (again / "a").iterdir()) == \
        sorted(p.read_text() for p in (tmp_path / "a").iterdir())


def test_benign_rows_sample_each_source_of_the_role(monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    monkeypatch.setattr(corpora, "SOURCES", (
        _fake("a", "fit", 30, 100), _fake("h1", "heldout", 30, 100),
        _fake("h2", "heldout", 3, 100)))
    rows = list(corpora.benign_rows("heldout", per_source=10, cache=tmp_path))
    groups = [r["group"] for r in rows]
    assert groups.count("h1") == 10 and groups.count("h2") == 3 and "a" not in groups
    assert all(r["label"] == 0 and r["text"] for r in rows)


def test_write_documents_writes_each_non_empty_document(tmp_path: Path) -> None:
    src = _fake("a", "heldout", 3, 10)
    files = corpora.write_documents(src, tmp_path / "a")  # cache: the default folder
    assert [f.read_text() for f in files] == [f"a {i} " + "x" * 10 for i in range(3)]
