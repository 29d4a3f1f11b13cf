"""`latentguard rules validate | apply | list | delete | stats` (stats: `cli/rule_stats.py`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from latentguard import wire
from latentguard.cli import render, rule_stats
from latentguard.cli.common import (
    EXIT_FAIL,
    EXIT_OK,
    CliError,
    Subparsers,
    add_connection,
    call,
    client_for,
    console,
)


def read_pack(path: str) -> Any:
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

            client = client_for(args)
            resp = call(client, client.rules.ValidateRule,
                         rules_pb2.ValidateRuleRequest(yaml=Path(path).read_text(), source=path))
            if not resp.valid:
                failed += 1
                for p in resp.problems:
                    print(f"{path}:{p.line or '?'}: {p.field}: {p.problem}", file=sys.stderr)
                continue
            n_rules, n_policies = len(resp.rules), len(resp.policies)
        else:
            try:
                pack = read_pack(path)
            except CliError as exc:
                failed += 1
                print(exc, file=sys.stderr)
                continue
            n_rules, n_policies = len(pack.rules), len(pack.policies)
        print(f"{path}: ok ({n_rules} rules, {n_policies} policies)")
    return EXIT_FAIL if failed else EXIT_OK


def cmd_rules_apply(args: argparse.Namespace) -> int:
    from latentguard.v1 import rules_pb2

    pack = read_pack(args.file)
    client = client_for(args)
    # The whole pack is checked on the sidecar first (its SAE's features and probes, and the
    # SAE the pack was written for), so a refused pack leaves nothing half applied.
    resp = call(client, client.rules.ValidateRule, rules_pb2.ValidateRuleRequest(
        yaml=Path(args.file).read_text(), source=args.file, bind_to_current_sae=args.bind))
    for p in resp.problems:
        print(f"{args.file}:{p.line or '?'}: {p.field}: {p.problem}", file=sys.stderr)
    if not resp.valid and any(p.field == "sae" or p.field.endswith(".sae")
                              for p in resp.problems):
        print(f"{args.file}: nothing applied; if the pack's feature indices and probes mean the "
              "same in the sidecar's SAE, rerun with --bind-to-current-sae to bind it to it",
              file=sys.stderr)
    if args.dry_run or not resp.valid:
        print("valid" if resp.valid else "invalid")
        return EXIT_OK if resp.valid else EXIT_FAIL
    bound_to = ""
    for rule in pack.rules:
        stored = call(client, client.rules.PutRule, rules_pb2.PutRuleRequest(
            rule=wire.rule_proto(rule), bind_to_current_sae=args.bind))
        print(f"rule {stored.name}: version {stored.version}")
        bound_to = render.sae_text(stored.sae) if stored.HasField("sae") else bound_to
    if bound_to:
        print(f"rules bound to SAE {bound_to}")
    for policy in pack.policies:
        stored = call(client, client.rules.PutPolicy,
                       rules_pb2.PutPolicyRequest(policy=wire.policy_proto(policy)))
        print(f"policy {stored.name}: version {stored.version}")
    return EXIT_OK


def cmd_rules_list(args: argparse.Namespace) -> int:
    from latentguard.v1 import rules_pb2

    client = client_for(args)
    rules = call(client, client.rules.ListRules, rules_pb2.ListRulesRequest())
    policies = call(client, client.rules.ListPolicies, rules_pb2.ListPoliciesRequest())
    if args.json:
        print(json.dumps({"rules": [json_format.MessageToDict(r) for r in rules.rules],
                          "policies": [json_format.MessageToDict(p) for p in policies.policies],
                          "revision": rules.revision,
                          "sae": json_format.MessageToDict(rules.sae)
                          if rules.HasField("sae") else None}, indent=2))
        return EXIT_OK
    out = console()
    out.print(render.rules_table(rules))
    for line in render.inactive_rules(rules):
        out.print(line)
    out.print(render.policies_table(policies))
    return EXIT_OK


def cmd_rules_delete(args: argparse.Namespace) -> int:
    from latentguard.v1 import rules_pb2

    client = client_for(args)
    kw = {} if args.expected_version is None else {"expected_version": args.expected_version}
    if args.policy:
        call(client, client.rules.DeletePolicy,
              rules_pb2.DeletePolicyRequest(name=args.name, **kw))
    else:
        call(client, client.rules.DeleteRule, rules_pb2.DeleteRuleRequest(name=args.name, **kw))
    print(f"deleted {'policy' if args.policy else 'rule'} {args.name}")
    return EXIT_OK


def register(sub: Subparsers) -> None:
    rules = sub.add_parser("rules", help="validate, apply, list and delete rules").add_subparsers(
        dest="rules_command", required=True)
    p = rules.add_parser("validate", help="check rule files (locally, or --remote against the "
                         "sidecar's SAE)")
    p.add_argument("files", nargs="+")
    p.add_argument("--remote", action="store_true")
    add_connection(p)
    p.set_defaults(func=cmd_rules_validate)
    p = rules.add_parser("apply", help="create or update the rules and policies of a file")
    p.add_argument("file")
    p.add_argument("--dry-run", action="store_true", help="validate on the sidecar only")
    p.add_argument("--bind-to-current-sae", dest="bind", action="store_true",
                   help="bind rules written for another SAE to the sidecar's (refused "
                   "otherwise); only when their feature indices and probes mean the same there")
    add_connection(p)
    p.set_defaults(func=cmd_rules_apply)
    p = rules.add_parser("list", help="rules and policies")
    p.add_argument("--json", action="store_true")
    add_connection(p)
    p.set_defaults(func=cmd_rules_list)
    p = rules.add_parser("delete", help="delete a rule (or --policy)")
    p.add_argument("name")
    p.add_argument("--policy", action="store_true")
    p.add_argument("--expected-version", type=int)
    add_connection(p)
    p.set_defaults(func=cmd_rules_delete)
    rule_stats.register(rules)
