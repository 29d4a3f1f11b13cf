"""The dependency arrows of README's "How it fits together", checked on the sources: monitors/
imports nothing else of the project, the plugin never imports the sidecar, the sidecar never
imports the offline lab or the CLI."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: package folder -> latentguard subpackages it must not import
FORBIDDEN = {
    "monitors": ("server", "plugin", "lab", "cli", "wire", "paths", "v1"),
    "plugin": ("server", "lab", "cli"),
    "server": ("lab", "cli", "plugin"),
    "lab": ("server", "cli", "plugin"),
}


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_dependencies_point_one_way(folder: str) -> None:
    bad = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        for name in imported(path):
            parts = name.split(".")
            if parts[0] == "latentguard" and len(parts) > 1 and parts[1] in FORBIDDEN[folder]:
                bad.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not bad, "\n".join(bad)
