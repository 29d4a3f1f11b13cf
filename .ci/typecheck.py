"""Runs mypy on the latentguard package as it is installed (`make lint` calls this).

The package's modules live in several top-level folders mapped by
`[tool.setuptools.package-dir]` (monitors/ is latentguard.monitors, ...). mypy cannot follow
setuptools' editable-install finder, so this lays the same mapping out as a tree of symbolic
links in a temporary folder and checks that tree; mypy's settings are in pyproject.toml.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def link_tree(dest: Path) -> Path:
    mapping: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text())[
        "tool"]["setuptools"]["package-dir"]
    root_pkg = dest / "latentguard"
    root_pkg.mkdir()
    base = ROOT / mapping["latentguard"]
    subpackages = {name.split(".", 1)[1]: folder for name, folder in mapping.items()
                   if name.startswith("latentguard.")}
    for entry in base.iterdir():
        if entry.name not in subpackages and entry.name != "__pycache__":
            (root_pkg / entry.name).symlink_to(entry)
    for name, folder in subpackages.items():
        (root_pkg / name).symlink_to(ROOT / folder)
    return root_pkg


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="latentguard-mypy-") as tmp:
        link_tree(Path(tmp))
        env = {**os.environ, "MYPYPATH": tmp}
        cmd = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
               "-p", "latentguard", *sys.argv[1:]]
        return subprocess.call(cmd, env=env, cwd=ROOT)


if __name__ == "__main__":
    sys.exit(main())
