"""`latentguard sae train | identity`."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

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


def cmd_sae_eval(args: argparse.Namespace) -> int:
    import json

    from latentguard.lab.corpora import source, write_documents
    from latentguard.lab.errors import LabError
    from latentguard.lab.training import (
        GroupEval,
        evaluate_groups,
        format_metrics,
        heldout_groups,
        load_model_dir,
    )
    from latentguard.monitors.errors import SAEFormatError
    from latentguard.monitors.sae import load_sae

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: "
                        "%(message)s")
    try:
        sae = load_sae(args.sae)
        groups: dict[str, list[Path]] = {}
        if args.corpus:
            groups |= {f"{k} (held out of {args.corpus})": v
                       for k, v in heldout_groups(args.corpus, args.eval_every,
                                                  args.suffixes).items()}
        for name in args.source:
            groups[name] = write_documents(source(name), args.work / name)
        if not groups:
            raise CliError("sae eval: give --corpus and/or --source")
        model, tokenizer = load_model_dir(args.model, sae.layer)
        results = evaluate_groups(model, tokenizer, sae, groups, GroupEval(
            layer=sae.layer, ctx_len=args.ctx_len, eval_tokens=args.eval_tokens,
            eval_lm_contexts=args.eval_lm_contexts))
    except (LabError, SAEFormatError) as exc:
        raise CliError(str(exc)) from None
    for name, m in results.items():
        print(f"{name}:\n  " + format_metrics(m).replace("\n", "\n  "))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
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
    p = sae.add_parser("eval", help="FVU, L0, dead features and LM loss recovered per corpus "
                       "source", description="Reconstruction and LM loss with the SAE spliced "
                       "in, BOS row left out, measured on each source separately: the "
                       "documents a training run held out of --corpus, by top folder, and "
                       "whole sources of latentguard.lab.corpora (--source).")
    p.add_argument("sae", help="SAE folder")
    p.add_argument("--model", type=Path, required=True, help="HF model folder")
    p.add_argument("--corpus", type=Path, help="the training corpus folder (its held-out "
                   "documents, every --eval-every-th, are measured per top folder)")
    p.add_argument("--eval-every", type=int, default=50, help="as in sae train")
    p.add_argument("--suffixes", nargs="+", default=[".py", ".txt", ".rst", ".md"])
    p.add_argument("--source", nargs="+", default=[], help="text sources to measure whole "
                   "(python -m latentguard.lab.corpora list)")
    p.add_argument("--work", type=Path, default=Path("sae-eval-sources"),
                   help="folder the sources' documents are written to")
    p.add_argument("--ctx-len", type=int, default=256)
    p.add_argument("--eval-tokens", type=int, default=65_536, help="tokens per source")
    p.add_argument("--eval-lm-contexts", type=int, default=32, help="contexts per source for "
                   "the LM loss (0: skip)")
    p.add_argument("--out", type=Path, help="JSON of every source's metrics")
    p.set_defaults(func=cmd_sae_eval)
