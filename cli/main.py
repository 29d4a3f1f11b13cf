"""`latentguard`: the parser of every command group (one module each), and the entry point."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import grpc

from latentguard import __version__
from latentguard.cli import eval as eval_cmd
from latentguard.cli import features, model, rules, sae, serve, traces
from latentguard.cli.common import EXIT_FAIL, EXIT_USAGE, CliError, describe_rpc_error

GROUPS = (serve, rules, traces, features, model, sae, eval_cmd)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="latentguard", description="SAE-feature safety monitor for served LLMs.")
    parser.add_argument("--version", action="version", version=f"latentguard {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["vllm"] and not {"-h", "--help"} & set(argv[1:2]):
        # Everything after `vllm` belongs to vLLM, options included.
        from latentguard.cli.launcher import run

        return run(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except CliError as exc:
        print(f"latentguard: {exc}", file=sys.stderr)
        return EXIT_USAGE if args.command == "serve" else EXIT_FAIL
    except grpc.RpcError as exc:
        print(f"latentguard: {describe_rpc_error(exc)}", file=sys.stderr)
        return EXIT_FAIL


if __name__ == "__main__":
    sys.exit(main())
