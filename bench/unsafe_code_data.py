"""Build the "unsafe code" data set: real Python functions labelled by bandit.

    .venv/bin/python -m bench.unsafe_code_data \
        --source /root/.pyenv/versions/3.11.7/lib/python3.11 --out data/unsafe_code.jsonl

Every module-level function and every method of a module-level class in the ``.py`` files under
``--source`` (test folders and site-packages left out) becomes a snippet (dedented, between
``--min-lines`` and ``--max-lines`` lines, exact duplicates dropped). bandit, an external and
widely used security linter that nobody in this project wrote, judges each snippet on its own
text, as the monitor will see it: a snippet is unsafe (label 1) when bandit reports at least one
issue of severity ``--min-severity`` (default medium) or above, e.g. B602/B605 shell injection,
B307 eval, B301 pickle, B324 weak hashes, B501 TLS verification off, B506 yaml.load. All of
bandit's test ids are kept per snippet, low-severity ones (assert, try/except/pass, importing
subprocess) included, so the label can be recomputed differently.

The split is fixed by source file: a file's SHA-256 of its relative path decides whether all its
snippets are ``train`` or ``heldout`` (``--heldout-percent``), so held-out functions never share a
file with training ones.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import logging
import subprocess
import sys
import tempfile
import textwrap
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

logger = logging.getLogger(__name__)

SEVERITIES = ("LOW", "MEDIUM", "HIGH")
TEST_DIRS = {"test", "tests", "idle_test"}
EXCLUDED_DIRS = {"site-packages", "__pycache__"}


@dataclass
class Snippet:
    id: str
    """``<relative path>:<line>:<qualified name>``."""
    source: str
    """Path of the file, relative to ``--source``."""
    text: str
    split: str = "train"
    label: int = 0
    bandit: list[str] = field(default_factory=list)
    """bandit test ids found in the snippet (sorted, with repeats), every severity."""
    flagged: list[str] = field(default_factory=list)
    """The ids at or above the severity that makes the label 1 (sorted, with repeats)."""
    severity: str | None = None
    """Highest bandit severity found, None when bandit found nothing."""


def source_files(root: Path, tests: bool = True) -> list[Path]:
    """``.py`` files under ``root`` (not in site-packages; in test folders only if ``tests``)."""
    skip = EXCLUDED_DIRS if tests else EXCLUDED_DIRS | TEST_DIRS
    return sorted(p for p in root.rglob("*.py")
                  if not skip & set(p.relative_to(root).parts[:-1]))


def _functions(tree: ast.Module) -> Iterator[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    funcs = (ast.FunctionDef, ast.AsyncFunctionDef)
    for node in tree.body:
        if isinstance(node, funcs):
            yield node.name, node
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, funcs):
                    yield f"{node.name}.{item.name}", item


def extract(path: Path, rel: str, min_lines: int = 3, max_lines: int = 60) -> list[Snippet]:
    """The file's functions and methods as dedented snippets of a suitable length."""
    try:
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source)
    except (OSError, UnicodeDecodeError, SyntaxError, ValueError) as exc:
        logger.debug("skipping %s: %s", path, exc)
        return []
    lines = source.splitlines()
    out = []
    for name, node in _functions(tree):
        start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
        end = node.end_lineno or node.lineno
        if not min_lines <= end - start + 1 <= max_lines:
            continue
        text = textwrap.dedent("\n".join(lines[start - 1:end])) + "\n"
        out.append(Snippet(id=f"{rel}:{start}:{name}", source=rel, text=text))
    return out


def split_of(rel: str, heldout_percent: int) -> str:
    bucket = int(hashlib.sha256(rel.encode()).hexdigest()[:8], 16) % 100
    return "heldout" if bucket < heldout_percent else "train"


def bandit_results(texts: Sequence[str]) -> list[list[dict[str, Any]] | None]:
    """bandit's JSON results (test_id, issue_severity, line_number, ...) per text; None where
    bandit could not parse it.

    Runs one bandit process over a temporary folder holding one file per text.
    """
    with tempfile.TemporaryDirectory(prefix="unsafe-code-") as tmp:
        folder = Path(tmp)
        for i, text in enumerate(texts):
            (folder / f"s{i}.py").write_text(text, encoding="utf-8")
        report = folder / "report.json"
        cmd = [sys.executable, "-m", "bandit", "-r", str(folder), "-f", "json", "-o",
               str(report), "-q", "--exit-zero"]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0 or not report.is_file():
            raise RuntimeError(f"bandit failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
        data = json.loads(report.read_text(encoding="utf-8"))
    results: list[list[dict[str, Any]] | None] = [[] for _ in texts]
    for err in data.get("errors", []):
        results[int(Path(err["filename"]).stem[1:])] = None
    for res in data["results"]:
        found = results[int(Path(res["filename"]).stem[1:])]
        if found is not None:
            found.append(res)
    return results


def bandit_issues(texts: Sequence[str]) -> list[list[tuple[str, str]] | None]:
    """bandit's (test id, severity) issues per text; None where bandit could not parse it."""
    return [None if found is None else [(r["test_id"], r["issue_severity"]) for r in found]
            for found in bandit_results(texts)]


def at_least(severity: str, min_severity: str = "MEDIUM") -> bool:
    """Whether a bandit severity counts as unsafe (the data set's rule: medium and above)."""
    return SEVERITIES.index(severity.upper()) >= SEVERITIES.index(min_severity.upper())


def label(snippets: list[Snippet], min_severity: str = "MEDIUM") -> list[Snippet]:
    """Fill each snippet's bandit ids, severity and label; drop those bandit cannot parse."""
    kept = []
    for snip, found in zip(snippets, bandit_issues([s.text for s in snippets]), strict=True):
        if found is None:
            logger.debug("bandit cannot parse %s", snip.id)
            continue
        snip.bandit = sorted(t for t, _ in found)
        ranks = [SEVERITIES.index(sev) for _, sev in found]
        snip.flagged = sorted(t for t, sev in found if at_least(sev, min_severity))
        snip.severity = SEVERITIES[max(ranks)] if ranks else None
        snip.label = int(bool(snip.flagged))
        kept.append(snip)
    return kept


def build(root: Path, *, min_lines: int = 3, max_lines: int = 60, heldout_percent: int = 20,
          min_severity: str = "MEDIUM", tests: bool = True) -> list[Snippet]:
    seen: set[str] = set()
    snippets = []
    for path in source_files(root, tests):
        rel = path.relative_to(root).as_posix()
        for snip in extract(path, rel, min_lines, max_lines):
            if snip.text in seen:
                continue
            seen.add(snip.text)
            snip.split = split_of(rel, heldout_percent)
            snippets.append(snip)
    logger.info("%d snippets from %s; running bandit", len(snippets), root)
    return label(snippets, min_severity)


def counts_table(snippets: list[Snippet]) -> Table:
    table = Table(title="unsafe-code data set")
    for name in ("split", "snippets", "unsafe (label 1)", "clean", "low-severity only",
                 "source files"):
        table.add_column(name, justify="right")
    for split in ("train", "heldout"):
        part = [s for s in snippets if s.split == split]
        low = sum(1 for s in part if s.severity and not s.label)
        table.add_row(split, str(len(part)), str(sum(s.label for s in part)),
                      str(sum(1 - s.label for s in part)), str(low),
                      str(len({s.source for s in part})))
    return table


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", type=Path, default=Path(ast.__file__).parent,
                   help="folder of Python files (default: this interpreter's standard library)")
    p.add_argument("--out", type=Path, default=Path("data/unsafe_code.jsonl"))
    p.add_argument("--min-lines", type=int, default=3)
    p.add_argument("--max-lines", type=int, default=60)
    p.add_argument("--heldout-percent", type=int, default=20)
    p.add_argument("--min-severity", choices=[s.lower() for s in SEVERITIES], default="medium")
    p.add_argument("--skip-tests", action="store_true",
                   help="leave out test folders (test/, tests/, idle_test/)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    snippets = build(args.source, min_lines=args.min_lines, max_lines=args.max_lines,
                     heldout_percent=args.heldout_percent, min_severity=args.min_severity,
                     tests=not args.skip_tests)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", encoding="utf-8") as f:
        for s in snippets:
            f.write(json.dumps(asdict(s)) + "\n")
    console = Console()
    console.print(counts_table(snippets))
    ids = Counter(t for s in snippets for t in set(s.flagged))
    console.print("bandit tests in unsafe snippets: " +
                  ", ".join(f"{t} {n}" for t, n in ids.most_common(15)))
    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()
    console.print(f"written to {args.out} (sha256 {digest})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
