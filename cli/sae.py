"""`latentguard sae train | identity`."""

from __future__ import annotations

import argparse
import logging

from latentguard.cli.common import (
    EXIT_OK,
    CliError,
    Subparsers,
)


def cmd_sae_train(args: argparse.Namespace) -> int:
    from latentguard.lab.errors import LabError
    from latentguard.lab.training import config_from_args, format_metrics, train

    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        metrics = train(config_from_args(args), resume=args.resume)
    except LabError as exc:
        raise CliError(str(exc)) from None
    print(format_metrics(metrics))
    print(f"SAE written to {args.out} (metrics.json beside it)")
    return EXIT_OK


def cmd_sae_identity(args: argparse.Namespace) -> int:
    from latentguard.monitors.errors import SAEFormatError
    from latentguard.monitors.rules import dump_rule_pack
    from latentguard.monitors.sae import load_sae

    try:
        sae = load_sae(args.path)
    except SAEFormatError as exc:
        raise CliError(str(exc)) from None
    print(f"# {sae.identity}; a rule pack written for this SAE says so with:")
    print(dump_rule_pack({"sae": sae.identity.model_dump()}), end="")
    return EXIT_OK


def register(sub: Subparsers) -> None:
    from latentguard.lab.training import add_train_arguments

    sae = sub.add_parser("sae", help="train sparse autoencoders, show an SAE's identity"
                         ).add_subparsers(
        dest="sae_command", required=True)
    p = sae.add_parser("train", help="train a TopK SAE on one layer's residual stream",
                       description="Streams a text corpus through an HF model and trains a TopK "
                       "SAE (AuxK against dead features) on the output of --layer; saves it in "
                       "SAELens format with metrics.json.")
    add_train_arguments(p)
    p.set_defaults(func=cmd_sae_train)
    p = sae.add_parser("identity", help="the identity of an SAE (hash of its weights, name, "
                       "hook), as a rule pack's `sae:` key")
    p.add_argument("path", help="SAE folder (or Gemma Scope params.npz)")
    p.set_defaults(func=cmd_sae_identity)
