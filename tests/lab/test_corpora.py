"""The text sources' roles and the passage cutter (pure; no source is read)."""

from __future__ import annotations

import pytest

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
