"""Regenerate (or check) the Python code generated from proto/latentguard/v1/*.proto.

`python -m latentguard.protogen` rewrites the generated files; `--check` only reports
whether the committed ones are current (the test suite runs that).
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent.parent
API_DIR = PROTO_ROOT / "latentguard" / "v1"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def generate(out_root: Path) -> list[Path]:
    """Compile every .proto under API_DIR into out_root; returns the generated files."""
    import grpc_tools
    from grpc_tools import protoc  # dev dependency: only needed to regenerate

    include = Path(grpc_tools.__file__).parent / "_proto"
    protos = sorted(p.relative_to(PROTO_ROOT).as_posix() for p in API_DIR.glob("*.proto"))
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {protos}")
    return sorted((out_root / "latentguard" / "v1").glob("*_pb2*.py*"))


def stale_files() -> list[str]:
    """Generated files that differ from what the .proto files produce now (empty when current)."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = {p.name: p for p in generate(Path(tmp))}
        committed = {p.name: p for p in API_DIR.iterdir() if p.name.endswith(GENERATED_SUFFIXES)}
        names = sorted(set(fresh) | set(committed))
        return [
            n
            for n in names
            if n not in fresh or n not in committed
            or not filecmp.cmp(fresh[n], committed[n], shallow=False)
        ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="only report stale files")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        if stale:
            print(f"stale generated files: {', '.join(stale)}; run `make proto`", file=sys.stderr)
            return 1
        return 0
    for old in API_DIR.glob("*_pb2*.py*"):
        old.unlink()
    for path in generate(PROTO_ROOT):
        print(path.relative_to(PROTO_ROOT.parent))
    return 0


if __name__ == "__main__":
    sys.exit(main())
