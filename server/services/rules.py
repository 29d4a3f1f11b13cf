"""The Rules service: versioned rules and policies, validated before they are stored."""

from __future__ import annotations

import asyncio
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Protocol

import grpc

from latentguard import wire
from latentguard.monitors.errors import (
    MonitorError,
    RuleValidationError,
    SAEMismatchError,
    UnknownFeatureError,
)
from latentguard.monitors.rules import (
    Policy,
    Rule,
    RuleCheck,
    check_binding,
    load_rule_pack,
    validate_policy,
    validate_rule,
)
from latentguard.monitors.rules.loading import MAX_YAML_BYTES, locate
from latentguard.monitors.sae import SAEIdentity
from latentguard.server.auth import Authenticator
from latentguard.server.errors import (
    FailedPrecondition,
    InvalidArgument,
    Unavailable,
    check_length,
    grpc_errors,
    quoted,
)
from latentguard.server.store import Store
from latentguard.v1 import rules_pb2, rules_pb2_grpc


class LoadedSAE(Protocol):
    """What the service asks of the sidecar's runtime: the SAE it loads and its checks."""

    @property
    def sae_identity(self) -> SAEIdentity | None: ...

    def rule_checker(self) -> RuleCheck | None:
        """The loaded SAE's and probes' check of a rule (plain data: a big pack's worker
        process runs it too); None without an SAE."""
        ...

    def inactive_reason(self, rule: Rule) -> str | None: ...


class _NoSAE:
    sae_identity: SAEIdentity | None = None

    def rule_checker(self) -> RuleCheck | None:
        return None

    def inactive_reason(self, rule: Rule) -> str | None:
        return None


MAX_NAME = 128
MAX_DESCRIPTION = 4096
IN_PROCESS_YAML = 64 * 1024
"""Packs up to this many characters are parsed in a thread; larger ones are parsed and checked
(and their answer built) in a worker process, since all of that holds the GIL: a 1 MiB pack
handled in a thread delays every Monitor step by hundreds of milliseconds."""

_pool: ProcessPoolExecutor | None = None


def _parser_pool() -> ProcessPoolExecutor:
    """One worker process for large packs, started on first use (spawned: forking a process
    that runs gRPC threads is unsafe)."""
    global _pool
    if _pool is None:
        _pool = ProcessPoolExecutor(max_workers=1,
                                    mp_context=multiprocessing.get_context("spawn"))
    return _pool


Parsed = tuple[list[Rule], list[Policy], SAEIdentity | None]
"""A pack's rules, policies and pack-level SAE."""


async def parse_pack(text: str, source: str) -> Parsed:
    """`load_rule_pack` off the event loop (in a thread: for packs up to IN_PROCESS_YAML)."""
    pack = await asyncio.to_thread(load_rule_pack, text, source)
    return pack.rules, pack.policies, pack.sae


def checked_pack(parsed: Parsed, text: str, source: str, *, bind: bool,
                 loaded: SAEIdentity | None, check: RuleCheck | None
                 ) -> rules_pb2.ValidateRuleResponse:
    """A parsed pack checked against the loaded SAE (``loaded``, ``check``), as the answer to
    ValidateRule. A problem names the field as the pack's text wrote it, and its line. Rules
    for another SAE are refused first (one problem for those that take the pack's ``sae``),
    unless ``bind``. Raises RuleValidationError for a rule the SAE or probes refuse."""
    rules, policies, pack_sae = parsed
    mismatched: dict[str, list[SAEMismatchError]] = {}
    for i, rule in enumerate(rules):
        try:
            rules[i] = _bound(rule, loaded, bind, "")
        except SAEMismatchError as exc:
            at_pack = pack_sae is not None and rule.sae == pack_sae
            mismatched.setdefault("sae" if at_pack else f"rules[{i}].sae", []).append(exc)
    if mismatched:
        problems = []
        for field, errors in mismatched.items():
            problem = errors[0].problem
            if len(errors) > 1:
                names = ", ".join(repr(e.rule) for e in errors[:10])
                if len(errors) > 10:
                    names += f" and {len(errors) - 10} more"
                problem = problem.replace(f"rule {errors[0].rule!r} was",
                                          f"rules {names} were", 1)
            field, line = locate(text, field)
            problems.append(rules_pb2.ValidationProblem(field=field, problem=problem,
                                                        line=line or 0))
        return rules_pb2.ValidateRuleResponse(valid=False, problems=problems)
    for i, rule in enumerate(rules):
        try:
            _check(check, rule, f"rules[{i}]")
        except RuleValidationError as exc:
            field, line = locate(text, exc.field)
            raise RuleValidationError(field, exc.problem, source=source,
                                      lines=[line]) from None
    return rules_pb2.ValidateRuleResponse(
        valid=True, rules=[wire.rule_proto(r) for r in rules],
        policies=[wire.policy_proto(p) for p in policies])


def problems_answer(exc: MonitorError) -> rules_pb2.ValidateRuleResponse:
    """ValidateRule's answer for a refused rule or pack: its problems as data."""
    if isinstance(exc, RuleValidationError):
        return rules_pb2.ValidateRuleResponse(valid=False, problems=[
            rules_pb2.ValidationProblem(field=f, problem=p, line=line or 0)
            for (f, p), line in zip(exc.errors, exc.lines, strict=True)])
    if isinstance(exc, SAEMismatchError):
        return rules_pb2.ValidateRuleResponse(valid=False, problems=[
            rules_pb2.ValidationProblem(field=exc.field, problem=exc.problem)])
    return rules_pb2.ValidateRuleResponse(
        valid=False, problems=[rules_pb2.ValidationProblem(field="rule", problem=str(exc))])


def validate_pack_in_worker(text: str, source: str, bind: bool, loaded: SAEIdentity | None,
                            check: RuleCheck | None) -> bytes:
    """The worker process's part for a big pack: parsed, checked and answered there, so the
    sidecar only decodes the answer (protobuf, in C), and none of the work holds its GIL."""
    try:
        pack = load_rule_pack(text, source)
        answer = checked_pack((list(pack.rules), list(pack.policies), pack.sae), text, source,
                              bind=bind, loaded=loaded, check=check)
    except MonitorError as exc:
        answer = problems_answer(exc)
    return answer.SerializeToString()


def _bound(rule: Rule, loaded: SAEIdentity | None, bind: bool, field: str) -> Rule:
    """The rule bound to the ``loaded`` SAE (SAEMismatchError naming ``field`` when it was
    written for another and ``bind`` is not set); as it is without an SAE."""
    return check_binding(rule, loaded, bind=bind, field=field) if loaded else rule


def _check(check: RuleCheck | None, rule: Rule, prefix: str) -> None:
    """The loaded SAE's and probes' checks; their errors become RuleValidationErrors naming
    the field."""
    if check is None:
        return
    try:
        check(rule)
    except UnknownFeatureError as exc:
        field = f"{prefix}.{exc.field}" if exc.field else prefix
        raise RuleValidationError(field, exc.problem) from None


def _check_text(msg: rules_pb2.Rule | rules_pb2.Policy, prefix: str) -> None:
    check_length(msg.name, f"{prefix}.name", MAX_NAME)
    check_length(msg.description, f"{prefix}.description", MAX_DESCRIPTION)


def _prefixed(exc: RuleValidationError, prefix: str) -> RuleValidationError:
    errors = [(f"{prefix}.{f}" if f else prefix, p) for f, p in exc.errors]
    return RuleValidationError(errors[0][0], errors[0][1], errors=errors)


class RulesService(rules_pb2_grpc.RulesServicer):
    def __init__(self, store: Store, auth: Authenticator, runtime: LoadedSAE | None = None
                 ) -> None:
        self._store = store
        self._auth = auth
        self._runtime: LoadedSAE = runtime if runtime is not None else _NoSAE()

    def _bind(self, rule: Rule, field: str, bind: bool) -> Rule:
        return _bound(rule, self._runtime.sae_identity, bind, field)

    def _check(self, rule: Rule, prefix: str) -> None:
        _check(self._runtime.rule_checker(), rule, prefix)

    def _validate_rule(self, msg: rules_pb2.Rule, prefix: str = "rule", bind: bool = False
                       ) -> Rule:
        """Runs in a worker thread: validating and compiling a big rule is CPU work. The rule
        comes back bound to the loaded SAE."""
        if not msg.name:
            raise InvalidArgument(f"{prefix}.name: required", field=f"{prefix}.name")
        _check_text(msg, prefix)
        try:
            rule = validate_rule(wire.rule_dict(msg))
        except RuleValidationError as exc:
            raise _prefixed(exc, prefix) from None
        rule = self._bind(rule, f"{prefix}.sae", bind)  # before its features mean anything
        self._check(rule, prefix)
        return rule

    def _checked_pack(self, parsed: Parsed, text: str, source: str, bind: bool
                      ) -> rules_pb2.ValidateRuleResponse:
        """`checked_pack` against this sidecar's SAE (in a worker thread: small packs)."""
        return checked_pack(parsed, text, source, bind=bind,
                            loaded=self._runtime.sae_identity, check=self._runtime.rule_checker())

    async def _validate_big_pack(self, text: str, source: str, bind: bool
                                 ) -> rules_pb2.ValidateRuleResponse:
        global _pool
        try:
            answer = await asyncio.get_running_loop().run_in_executor(
                _parser_pool(), validate_pack_in_worker, text, source, bind,
                self._runtime.sae_identity, self._runtime.rule_checker())
        except BrokenProcessPool:
            _pool = None
            raise Unavailable("the rule pack checker stopped; try again") from None
        return rules_pb2.ValidateRuleResponse.FromString(answer)

    async def _validate_policy(self, msg: rules_pb2.Policy) -> Policy:
        if not msg.name:
            raise InvalidArgument("policy.name: required", field="policy.name")
        _check_text(msg, "policy")
        try:
            policy = validate_policy(wire.policy_dict(msg))
        except RuleValidationError as exc:
            raise _prefixed(exc, "policy") from None
        known = {r.name for r in await self._store.rules.list()}
        for i, name in enumerate(policy.rules):
            if name != "*" and name not in known:
                raise RuleValidationError(f"policy.rules[{i}]", f"unknown rule {quoted(name)}")
        return policy

    @grpc_errors
    async def ListRules(self, request: rules_pb2.ListRulesRequest,
                        context: grpc.aio.ServicerContext) -> rules_pb2.ListRulesResponse:
        stored = await self._store.rules.list()
        revision = await self._store.revision()
        msgs = await asyncio.to_thread(self._listed, stored, request.enabled_only)
        resp = rules_pb2.ListRulesResponse(rules=msgs, revision=revision)
        if self._runtime.sae_identity is not None:
            resp.sae.CopyFrom(wire.sae_proto(self._runtime.sae_identity))
        return resp

    def _listed(self, stored: list[Any], enabled_only: bool) -> list[rules_pb2.Rule]:
        """Stored rules with why this sidecar does not apply each (a thread: compiling each
        rule against the SAE is CPU work)."""
        out = []
        for v in stored:
            rule = Rule.model_validate(v.spec)
            if rule.enabled or not enabled_only:
                out.append(wire.rule_proto(rule, v, self._runtime.inactive_reason(rule)))
        return out

    @grpc_errors
    async def GetRule(self, request: rules_pb2.GetRuleRequest,
                      context: grpc.aio.ServicerContext) -> rules_pb2.Rule:
        v = await self._store.rules.get(request.name)
        rule = Rule.model_validate(v.spec)
        return wire.rule_proto(rule, v, self._runtime.inactive_reason(rule))

    @grpc_errors
    async def ValidateRule(self, request: rules_pb2.ValidateRuleRequest,
                           context: grpc.aio.ServicerContext) -> rules_pb2.ValidateRuleResponse:
        kind = request.WhichOneof("input")
        rules: list[Rule]
        policies: list[Policy] = []
        try:
            if kind == "rule":
                rules = [await asyncio.to_thread(self._validate_rule, request.rule, "rule",
                                                 request.bind_to_current_sae)]
            elif kind == "yaml":
                check_length(request.source, "source", MAX_NAME)
                source = request.source or "<request>"
                bind = request.bind_to_current_sae
                if IN_PROCESS_YAML < len(request.yaml) <= MAX_YAML_BYTES:
                    return await self._validate_big_pack(request.yaml, source, bind)
                parsed = await parse_pack(request.yaml, source)
                return await asyncio.to_thread(self._checked_pack, parsed, request.yaml, source,
                                               bind)
            else:
                raise InvalidArgument("input: set either rule or yaml", field="input")
        except MonitorError as exc:
            return problems_answer(exc)
        return rules_pb2.ValidateRuleResponse(
            valid=True, rules=[wire.rule_proto(r) for r in rules],
            policies=[wire.policy_proto(p) for p in policies],
        )

    @grpc_errors
    async def PutRule(self, request: rules_pb2.PutRuleRequest,
                      context: grpc.aio.ServicerContext) -> rules_pb2.Rule:
        rule = await asyncio.to_thread(self._validate_rule, request.rule, "rule",
                                       request.bind_to_current_sae)
        expected = request.expected_version if request.HasField("expected_version") else None
        v = await self._store.rules.put(rule.name, rule.model_dump(mode="json"),
                                        expected_version=expected,
                                        actor=self._auth.caller_name(context))
        return wire.rule_proto(rule, v)

    @grpc_errors
    async def DeleteRule(self, request: rules_pb2.DeleteRuleRequest,
                         context: grpc.aio.ServicerContext) -> rules_pb2.DeleteRuleResponse:
        users = [p.name for p in await self._store.policies.list()
                 if request.name in p.spec.get("rules", [])]
        if users:
            raise FailedPrecondition(
                f"rule {quoted(request.name)} is used by policies {', '.join(users)}; "
                "remove it from them first", field="name")
        expected = request.expected_version if request.HasField("expected_version") else None
        await self._store.rules.delete(request.name, expected_version=expected)
        return rules_pb2.DeleteRuleResponse()

    @grpc_errors
    async def ListPolicies(self, request: rules_pb2.ListPoliciesRequest,
                           context: grpc.aio.ServicerContext) -> rules_pb2.ListPoliciesResponse:
        stored = await self._store.policies.list()
        return rules_pb2.ListPoliciesResponse(
            policies=[wire.policy_proto(Policy.model_validate(v.spec), v) for v in stored],
            revision=await self._store.revision(),
        )

    @grpc_errors
    async def GetPolicy(self, request: rules_pb2.GetPolicyRequest,
                        context: grpc.aio.ServicerContext) -> rules_pb2.Policy:
        v = await self._store.policies.get(request.name)
        return wire.policy_proto(Policy.model_validate(v.spec), v)

    @grpc_errors
    async def PutPolicy(self, request: rules_pb2.PutPolicyRequest,
                        context: grpc.aio.ServicerContext) -> rules_pb2.Policy:
        policy = await self._validate_policy(request.policy)
        expected = request.expected_version if request.HasField("expected_version") else None
        v = await self._store.policies.put(policy.name, policy.model_dump(mode="json"),
                                           expected_version=expected,
                                           actor=self._auth.caller_name(context))
        return wire.policy_proto(policy, v)

    @grpc_errors
    async def DeletePolicy(self, request: rules_pb2.DeletePolicyRequest,
                           context: grpc.aio.ServicerContext) -> rules_pb2.DeletePolicyResponse:
        expected = request.expected_version if request.HasField("expected_version") else None
        await self._store.policies.delete(request.name, expected_version=expected)
        return rules_pb2.DeletePolicyResponse()
