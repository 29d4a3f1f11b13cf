"""`latentguard features search | contrast | top | effect`."""

from __future__ import annotations

import argparse
import logging

from latentguard.cli.common import (
    EXIT_OK,
    CliError,
    Subparsers,
    add_connection,
    call,
    client_for,
    console,
)


def cmd_features_search(args: argparse.Namespace) -> int:
    from latentguard.v1 import features_pb2

    client = client_for(args)
    resp = call(client, client.features.SearchFeatures,
                 features_pb2.SearchFeaturesRequest(query=args.query, limit=args.limit))
    for f in resp.features:
        print(f"{f.index}\t{f.label}\t{f.description}")
    return EXIT_OK


def cmd_features_discover(args: argparse.Namespace) -> int:
    from latentguard.lab import discovery
    from latentguard.lab.errors import LabError

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    run = discovery.run_contrast if args.features_command == "contrast" else discovery.run_top
    try:
        run(args, console())
    except LabError as exc:
        raise CliError(str(exc)) from None
    return EXIT_OK


def cmd_features_effect(args: argparse.Namespace) -> int:
    from latentguard.lab.effects_cli import run_effect
    from latentguard.lab.errors import LabError

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        run_effect(args, console())
    except LabError as exc:
        raise CliError(str(exc)) from None
    return EXIT_OK


def register(sub: Subparsers) -> None:
    features = sub.add_parser("features", help="the SAE's feature catalog").add_subparsers(
        dest="features_command", required=True)
    p = features.add_parser("search")
    p.add_argument("query")
    p.add_argument("--limit", type=int, default=20)
    add_connection(p)
    p.set_defaults(func=cmd_features_search)
    from latentguard.lab.discovery import add_contrast_arguments, add_top_arguments

    p = features.add_parser("contrast", help="rank SAE features separating two sets of texts "
                            "(AUROC, mean difference)")
    add_contrast_arguments(p)
    p.set_defaults(func=cmd_features_discover)
    p = features.add_parser("top", help="the contexts where a feature fires most, highlighted")
    add_top_arguments(p)
    p.set_defaults(func=cmd_features_discover)
    from latentguard.lab.effects_cli import add_effect_arguments

    p = features.add_parser("effect", help="what steering a feature or direction at the SAE's "
                            "layer does to the next-token distribution (KL, tokens gained and "
                            "lost, target log-probs)")
    add_effect_arguments(p)
    p.set_defaults(func=cmd_features_effect)
