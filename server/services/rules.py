"""The Rules service: versioned rules and policies, validated before they are stored."""

from __future__ import annotations

from collections.abc import Callable

import grpc

from latentguard import wire
from latentguard.monitors.errors import MonitorError, RuleValidationError
from latentguard.monitors.rules import (
    Policy,
    Rule,
    load_rule_pack,
    validate_policy,
    validate_rule,
)
from latentguard.server.auth import Authenticator
from latentguard.server.errors import FailedPrecondition, InvalidArgument, grpc_errors
from latentguard.server.store import Store
from latentguard.v1 import rules_pb2, rules_pb2_grpc

#: Extra checks against the loaded SAE and probes (feature range, probe names); may raise.
RuleChecker = Callable[[Rule], None]


def _prefixed(exc: RuleValidationError, prefix: str) -> RuleValidationError:
    errors = [(f"{prefix}.{f}" if f else prefix, p) for f, p in exc.errors]
    return RuleValidationError(errors[0][0], errors[0][1], errors=errors)


class RulesService(rules_pb2_grpc.RulesServicer):
    def __init__(self, store: Store, auth: Authenticator,
                 checker: Callable[[], RuleChecker | None] = lambda: None) -> None:
        self._store = store
        self._auth = auth
        self._checker = checker

    def _validate_rule(self, msg: rules_pb2.Rule, prefix: str = "rule") -> Rule:
        if not msg.name:
            raise InvalidArgument(f"{prefix}.name: required", field=f"{prefix}.name")
        try:
            rule = validate_rule(wire.rule_dict(msg))
        except RuleValidationError as exc:
            raise _prefixed(exc, prefix) from None
        check = self._checker()
        if check is not None:
            check(rule)
        return rule

    async def _validate_policy(self, msg: rules_pb2.Policy) -> Policy:
        if not msg.name:
            raise InvalidArgument("policy.name: required", field="policy.name")
        try:
            policy = validate_policy(wire.policy_dict(msg))
        except RuleValidationError as exc:
            raise _prefixed(exc, "policy") from None
        known = {r.name for r in await self._store.rules.list()}
        for i, name in enumerate(policy.rules):
            if name != "*" and name not in known:
                raise RuleValidationError(f"policy.rules[{i}]", f"unknown rule {name!r}")
        return policy

    @grpc_errors
    async def ListRules(self, request: rules_pb2.ListRulesRequest,
                        context: grpc.aio.ServicerContext) -> rules_pb2.ListRulesResponse:
        stored = await self._store.rules.list()
        rules = [(Rule.model_validate(v.spec), v) for v in stored]
        return rules_pb2.ListRulesResponse(
            rules=[wire.rule_proto(r, v) for r, v in rules
                   if r.enabled or not request.enabled_only],
            revision=await self._store.revision(),
        )

    @grpc_errors
    async def GetRule(self, request: rules_pb2.GetRuleRequest,
                      context: grpc.aio.ServicerContext) -> rules_pb2.Rule:
        v = await self._store.rules.get(request.name)
        return wire.rule_proto(Rule.model_validate(v.spec), v)

    @grpc_errors
    async def ValidateRule(self, request: rules_pb2.ValidateRuleRequest,
                           context: grpc.aio.ServicerContext) -> rules_pb2.ValidateRuleResponse:
        kind = request.WhichOneof("input")
        try:
            if kind == "rule":
                rules, policies = [self._validate_rule(request.rule)], []
            elif kind == "yaml":
                pack = load_rule_pack(request.yaml, source=request.source or "<request>")
                check = self._checker()
                for i, rule in enumerate(pack.rules):
                    if check is not None:
                        try:
                            check(rule)
                        except MonitorError as exc:
                            raise RuleValidationError(f"rules[{i}]", str(exc)) from None
                rules, policies = pack.rules, pack.policies
            else:
                raise InvalidArgument("input: set either rule or yaml", field="input")
        except RuleValidationError as exc:
            return rules_pb2.ValidateRuleResponse(valid=False, problems=[
                rules_pb2.ValidationProblem(field=f, problem=p, line=line or 0)
                for (f, p), line in zip(exc.errors, exc.lines, strict=True)
            ])
        except MonitorError as exc:
            return rules_pb2.ValidateRuleResponse(
                valid=False, problems=[rules_pb2.ValidationProblem(field="rule", problem=str(exc))])
        return rules_pb2.ValidateRuleResponse(
            valid=True, rules=[wire.rule_proto(r) for r in rules],
            policies=[wire.policy_proto(p) for p in policies],
        )

    @grpc_errors
    async def PutRule(self, request: rules_pb2.PutRuleRequest,
                      context: grpc.aio.ServicerContext) -> rules_pb2.Rule:
        rule = self._validate_rule(request.rule)
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
                f"rule {request.name!r} is used by policies {', '.join(users)}; "
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
