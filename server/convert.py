"""Wire types (proto) <-> the server's models, at the gRPC edge and nowhere else."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from pydantic import ValidationError

from latentguard.monitors.rules import Policy, Rule, Steer
from latentguard.server.errors import InvalidArgument
from latentguard.server.records import (
    AlertRecord,
    HitRecord,
    ReviewRecord,
    TokenRecord,
    TraceRecord,
    Versioned,
)
from latentguard.v1 import common_pb2, rules_pb2, traces_pb2

# Enum values <-> the strings of the rule schema, one table each.
SEVERITY = {"info": 1, "low": 2, "medium": 3, "high": 4, "critical": 5}
ACTION = {"alert": 1, "block": 2, "steer": 3}
STEER_MODE = {"add": 1, "clamp": 2, "ablate": 3}
SCOPE = {"prompt": 1, "generation": 2, "both": 3}
AGG = {"max": 1, "mean": 2, "sum": 3, "count": 4}
OP = {">": 1, ">=": 2, "<": 3, "<=": 4}
MODE = {"sync": 1, "async": 2}
FAILURE = {"open": 1, "closed": 2}
STATUS = {"clean": 1, "flagged": 2, "reviewed": 3}
LABEL = {"true_positive": 1, "false_positive": 2, "escalate": 3}


def _name(table: dict[str, int], value: int) -> str | None:
    """The schema string of an enum value; None for UNSPECIFIED (the schema default applies)."""
    for k, v in table.items():
        if v == value:
            return k
    return None if value == 0 else f"<unknown enum value {value}>"


def to_timestamp(at: datetime | None) -> Timestamp | None:
    if at is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(at.astimezone(UTC))
    return ts


def from_timestamp(ts: Timestamp) -> datetime:
    return ts.ToDatetime(tzinfo=UTC)


def _put(d: dict[str, Any], key: str, value: Any) -> None:
    if value is not None:
        d[key] = value


# ---- rules: proto -> plain dict that the pydantic schema validates -------------------------

def steer_dict(msg: common_pb2.Steer) -> dict[str, Any]:
    d: dict[str, Any] = {"features": [{"feature": f.feature, "value": f.value}
                                      for f in msg.features]}
    _put(d, "mode", _name(STEER_MODE, msg.mode))
    if msg.tokens:
        d["tokens"] = msg.tokens
    if msg.preserve_norm:
        d["preserve_norm"] = True
    return d


def steer_model(msg: common_pb2.Steer, field: str, d_sae: int | None) -> Steer:
    """A validated steer from the wire; InvalidArgument names the offending sub-field."""
    try:
        steer = Steer.model_validate(steer_dict(msg))
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join([field, *(str(p) for p in err["loc"])])
        raise InvalidArgument(f"{where}: {err['msg']}", field=where) from None
    for i, f in enumerate(steer.features):
        if d_sae is not None and f.feature >= d_sae:
            where = f"{field}.features[{i}].feature"
            raise InvalidArgument(f"{where}: {f.feature} out of range (d_sae {d_sae})",
                                  field=where)
    return steer


def _condition_dict(msg: rules_pb2.Condition) -> dict[str, Any]:
    kind = msg.WhichOneof("kind")
    if kind in ("all", "any"):
        return {kind: [_condition_dict(c) for c in getattr(msg, kind).conditions]}
    if kind is None:
        return {}
    s = msg.signal
    d: dict[str, Any] = {"threshold": s.threshold}
    source = s.WhichOneof("source")
    if source is not None:
        d[source] = getattr(s, source)
    _put(d, "op", _name(OP, s.op))
    if s.HasField("window"):
        w: dict[str, Any] = {"size": s.window.size}
        _put(w, "agg", _name(AGG, s.window.agg))
        if s.window.HasField("above"):
            w["above"] = s.window.above
        d["window"] = w
    if s.consecutive:
        d["consecutive"] = s.consecutive
    return {"signal": d}


def rule_dict(msg: rules_pb2.Rule) -> dict[str, Any]:
    d: dict[str, Any] = {"name": msg.name, "when": _condition_dict(msg.when)}
    if msg.description:
        d["description"] = msg.description
    _put(d, "severity", _name(SEVERITY, msg.severity))
    if msg.HasField("enabled"):
        d["enabled"] = msg.enabled
    _put(d, "scope", _name(SCOPE, msg.scope))
    if msg.HasField("action"):
        action: dict[str, Any] = {}
        _put(action, "type", _name(ACTION, msg.action.type))
        if msg.action.HasField("steer"):
            action["steer"] = steer_dict(msg.action.steer)
        d["action"] = action
    return d


def policy_dict(msg: rules_pb2.Policy) -> dict[str, Any]:
    d: dict[str, Any] = {"name": msg.name, "rules": list(msg.rules)}
    if msg.description:
        d["description"] = msg.description
    _put(d, "mode", _name(MODE, msg.mode))
    _put(d, "on_failure", _name(FAILURE, msg.on_failure))
    if msg.timeout_ms:
        d["timeout_ms"] = msg.timeout_ms
    if msg.HasField("monitoring"):
        d["monitoring"] = msg.monitoring
    return d


# ---- rules: validated models -> proto -------------------------------------------------------

def steer_proto(steer: Any) -> common_pb2.Steer:
    return common_pb2.Steer(
        mode=STEER_MODE[steer.mode], tokens=steer.tokens, preserve_norm=steer.preserve_norm,
        features=[common_pb2.SteerFeature(feature=f.feature, value=f.value)
                  for f in steer.features],
    )


def _condition_proto(cond: Any) -> rules_pb2.Condition:
    if cond.all is not None:
        return rules_pb2.Condition(all=rules_pb2.Conditions(
            conditions=[_condition_proto(c) for c in cond.all]))
    if cond.any is not None:
        return rules_pb2.Condition(any=rules_pb2.Conditions(
            conditions=[_condition_proto(c) for c in cond.any]))
    s = cond.signal
    sig = rules_pb2.Signal(op=OP[s.op], threshold=s.threshold, consecutive=s.consecutive)
    if s.feature is not None:
        sig.feature = s.feature
    else:
        sig.probe = s.probe
    if s.window is not None:
        sig.window.size = s.window.size
        sig.window.agg = AGG[s.window.agg]
        if s.window.above is not None:
            sig.window.above = s.window.above
    return rules_pb2.Condition(signal=sig)


def rule_proto(rule: Rule, stored: Versioned | None = None) -> rules_pb2.Rule:
    msg = rules_pb2.Rule(
        name=rule.name, description=rule.description, severity=SEVERITY[rule.severity],
        enabled=rule.enabled, scope=SCOPE[rule.scope], when=_condition_proto(rule.when),
        action=rules_pb2.Action(type=ACTION[rule.action.type]),
    )
    if rule.action.steer is not None:
        msg.action.steer.CopyFrom(steer_proto(rule.action.steer))
    if stored is not None:
        msg.version = stored.version
        msg.updated_at.CopyFrom(to_timestamp(stored.updated_at))
        msg.updated_by = stored.updated_by
    return msg


def policy_proto(policy: Policy, stored: Versioned | None = None) -> rules_pb2.Policy:
    msg = rules_pb2.Policy(
        name=policy.name, description=policy.description, rules=policy.rules,
        mode=MODE[policy.mode], on_failure=FAILURE[policy.on_failure],
        timeout_ms=policy.timeout_ms, monitoring=policy.monitoring,
    )
    if stored is not None:
        msg.version = stored.version
        msg.updated_at.CopyFrom(to_timestamp(stored.updated_at))
        msg.updated_by = stored.updated_by
    return msg


# ---- traces ---------------------------------------------------------------------------------

def hit_proto(h: HitRecord) -> common_pb2.RuleHit:
    return common_pb2.RuleHit(
        rule=h.rule, severity=SEVERITY.get(h.severity, 0), action=ACTION.get(h.action, 0),
        position=h.position, score=h.score, explanation=h.explanation, at=to_timestamp(h.at),
        evidence=[common_pb2.Evidence(signal=e.signal, position=e.position, value=e.value)
                  for e in h.evidence],
    )


def token_proto(t: TokenRecord, labels: dict[int, str] | None = None) -> common_pb2.TokenRecord:
    labels = labels or {}
    return common_pb2.TokenRecord(
        position=t.position, token_id=t.token_id, text=t.text, prompt=t.prompt,
        top_features=[common_pb2.FeatureActivation(feature=f.feature, value=f.value,
                                                   label=labels.get(f.feature, ""))
                      for f in t.top_features],
    )


def review_proto(r: ReviewRecord) -> traces_pb2.Review:
    return traces_pb2.Review(label=LABEL[r.label], reviewer=r.reviewer, note=r.note,
                             at=to_timestamp(r.at))


def trace_proto(t: TraceRecord, labels: dict[int, str] | None = None) -> traces_pb2.Trace:
    return traces_pb2.Trace(
        id=t.id, request_tag=t.request_tag, model=t.model, policy=t.policy,
        started_at=to_timestamp(t.started_at), ended_at=to_timestamp(t.ended_at),
        status=STATUS[t.status], max_severity=SEVERITY.get(t.max_severity, 0),
        rules_hit=t.rules_hit, finish_reason=t.finish_reason, blocked=t.blocked,
        blocked_by=t.blocked_by, prompt_tokens=t.prompt_tokens,
        completion_tokens=t.completion_tokens, otel_trace_id=t.otel_trace_id,
        otel_span_id=t.otel_span_id, monitoring_gap=t.monitoring_gap,
        prompt_text=t.prompt_text, completion_text=t.completion_text,
        tokens=[token_proto(tok, labels) for tok in t.tokens],
        hits=[hit_proto(h) for h in t.hits], reviews=[review_proto(r) for r in t.reviews],
    )


def alert_proto(a: AlertRecord) -> traces_pb2.Alert:
    return traces_pb2.Alert(id=a.id, trace_id=a.trace_id, request_tag=a.request_tag,
                            model=a.model, policy=a.policy, hit=hit_proto(a.hit))


def severity_name(value: int) -> str:
    """'' for UNSPECIFIED."""
    return _name(SEVERITY, value) or ""


def status_name(value: int) -> str | None:
    return _name(STATUS, value)


def label_name(value: int) -> str | None:
    return _name(LABEL, value)
