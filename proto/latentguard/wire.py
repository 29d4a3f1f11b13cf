"""The one converter between the wire (latentguard.v1 protos) and the domain types of rules,
policies, steering, rule hits, verdicts and tensors. The plugin and the sidecar both use it;
the sidecar's own records (traces, reviews, alerts) convert in `latentguard.server.convert`.

Enum tables are derived from the proto descriptors (``SEVERITY_HIGH`` <-> ``"high"``), so a
value added to a .proto needs no second table; a test checks they match the rule schema's.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol, TypeVar, cast, overload

import numpy as np
import torch
from google.protobuf.descriptor import EnumDescriptor
from google.protobuf.timestamp_pb2 import Timestamp
from pydantic import ValidationError

from latentguard.monitors.errors import RuleValidationError, ShapeError
from latentguard.monitors.rules import Condition, Policy, Rule, RuleHit, Steer
from latentguard.monitors.sae.identity import SAEIdentity
from latentguard.v1 import common_pb2, monitor_pb2, rules_pb2, traces_pb2

__all__ = [
    "ACTION", "AGG", "CHECK", "FAILURE", "LABEL", "MODE", "OP", "SCOPE", "SEVERITY", "STATUS",
    "STEER_MODE", "EnumTable", "Stored", "Verdict", "check_steer", "from_timestamp", "hit_proto",
    "policy_dict", "policy_proto", "rule_dict", "rule_proto", "rows_from_proto", "rows_proto",
    "sae_proto", "steer_model", "steer_proto", "to_timestamp", "verdict_model", "verdict_proto",
]


E = TypeVar("E", bound=int)


class EnumTable(Mapping[str, E]):
    """Schema strings <-> one proto enum's values (UNSPECIFIED = 0 has no string)."""

    def __init__(self, enum: type[E], prefix: str,
                 spelling: Mapping[str, str] | None = None) -> None:
        spelling = spelling or {}
        descriptor: EnumDescriptor = getattr(enum, "DESCRIPTOR")  # noqa: B009 (not in stubs)
        self._values: dict[str, E] = {}
        for v in descriptor.values:
            if v.number == 0:
                continue
            suffix = v.name.removeprefix(prefix)
            self._values[spelling.get(suffix, suffix.lower())] = cast(E, v.number)
        self._names = {int(number): name for name, number in self._values.items()}

    def __getitem__(self, name: str) -> E:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    @property
    def names(self) -> tuple[str, ...]:
        """The schema strings, in the enum's order."""
        return tuple(self._values)

    def code(self, name: str | None) -> E:
        """The value of a schema string; UNSPECIFIED (0) for None, "" or an unknown string."""
        return self._values.get(name or "", cast(E, 0))

    def name(self, value: int) -> str | None:
        """The schema string of a value; None for UNSPECIFIED (the schema default applies)."""
        if value == 0:
            return None
        return self._names.get(value, f"<unknown enum value {value}>")


SEVERITY = EnumTable(common_pb2.Severity, "SEVERITY_")
ACTION = EnumTable(common_pb2.ActionType, "ACTION_TYPE_")
STEER_MODE = EnumTable(common_pb2.SteerMode, "STEER_MODE_")
SCOPE = EnumTable(rules_pb2.Scope, "SCOPE_")
CHECK = EnumTable(rules_pb2.Check, "CHECK_")
AGG = EnumTable(rules_pb2.Aggregation, "AGGREGATION_")
OP = EnumTable(rules_pb2.Comparison, "COMPARISON_",
               {"GT": ">", "GE": ">=", "LT": "<", "LE": "<="})
MODE = EnumTable(rules_pb2.MonitorMode, "MONITOR_MODE_")
FAILURE = EnumTable(rules_pb2.FailureMode, "FAILURE_MODE_")
STATUS = EnumTable(traces_pb2.TraceStatus, "TRACE_STATUS_")
LABEL = EnumTable(traces_pb2.ReviewLabel, "REVIEW_LABEL_")


@overload
def to_timestamp(at: datetime) -> Timestamp: ...
@overload
def to_timestamp(at: None) -> None: ...
@overload
def to_timestamp(at: datetime | None) -> Timestamp | None: ...
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


# ---- steering -------------------------------------------------------------------------------

def _steer_dict(msg: common_pb2.Steer) -> dict[str, Any]:
    d: dict[str, Any] = {"features": [{"feature": f.feature, "value": f.value}
                                      for f in msg.features]}
    _put(d, "mode", STEER_MODE.name(msg.mode))
    if msg.tokens:
        d["tokens"] = msg.tokens
    if msg.preserve_norm:
        d["preserve_norm"] = True
    return d


def steer_model(msg: common_pb2.Steer, field: str, d_sae: int | None) -> Steer:
    """A validated steer from the wire; RuleValidationError names the offending sub-field."""
    try:
        steer = Steer.model_validate(_steer_dict(msg))
    except ValidationError as exc:
        err = exc.errors()[0]
        raise RuleValidationError(".".join([field, *(str(p) for p in err["loc"])]),
                                  err["msg"]) from None
    check_steer(steer, field, d_sae)
    return steer


def check_steer(steer: Steer, field: str, d_sae: int | None) -> None:
    """Refuses a steer naming features the SAE does not have."""
    for i, f in enumerate(steer.features):
        if d_sae is not None and f.feature >= d_sae:
            raise RuleValidationError(f"{field}.features[{i}].feature",
                                      f"{f.feature} out of range (d_sae {d_sae})")


def steer_proto(steer: Steer) -> common_pb2.Steer:
    return common_pb2.Steer(
        mode=STEER_MODE[steer.mode], tokens=steer.tokens, preserve_norm=steer.preserve_norm,
        features=[common_pb2.SteerFeature(feature=f.feature, value=f.value)
                  for f in steer.features],
    )


# ---- rules and policies: proto -> plain dict that the pydantic schema validates -------------

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
    _put(d, "op", OP.name(s.op))
    if s.HasField("window"):
        w: dict[str, Any] = {"size": s.window.size} if s.window.size else {}
        _put(w, "agg", AGG.name(s.window.agg))
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
    _put(d, "severity", SEVERITY.name(msg.severity))
    if msg.HasField("enabled"):
        d["enabled"] = msg.enabled
    _put(d, "scope", SCOPE.name(msg.scope))
    _put(d, "check", CHECK.name(msg.check))
    if msg.HasField("sae"):
        d["sae"] = {"name": msg.sae.name, "hook": msg.sae.hook, "sha256": msg.sae.sha256}
    if msg.HasField("action"):
        action: dict[str, Any] = {}
        _put(action, "type", ACTION.name(msg.action.type))
        if msg.action.HasField("steer"):
            action["steer"] = _steer_dict(msg.action.steer)
        d["action"] = action
    return d


def policy_dict(msg: rules_pb2.Policy) -> dict[str, Any]:
    d: dict[str, Any] = {"name": msg.name, "rules": list(msg.rules)}
    if msg.description:
        d["description"] = msg.description
    _put(d, "mode", MODE.name(msg.mode))
    _put(d, "on_failure", FAILURE.name(msg.on_failure))
    if msg.timeout_ms:
        d["timeout_ms"] = msg.timeout_ms
    if msg.HasField("monitoring"):
        d["monitoring"] = msg.monitoring
    return d


# ---- rules and policies: validated models -> proto ------------------------------------------

class Stored(Protocol):
    """What a stored rule or policy adds on the wire (the store's `Versioned`)."""

    version: int
    updated_at: datetime
    updated_by: str


def _condition_proto(cond: Condition) -> rules_pb2.Condition:
    if cond.all is not None:
        return rules_pb2.Condition(all=rules_pb2.Conditions(
            conditions=[_condition_proto(c) for c in cond.all]))
    if cond.any is not None:
        return rules_pb2.Condition(any=rules_pb2.Conditions(
            conditions=[_condition_proto(c) for c in cond.any]))
    s = cond.signal
    assert s is not None  # the schema requires exactly one of all / any / signal
    sig = rules_pb2.Signal(op=OP[s.op], threshold=s.threshold, consecutive=s.consecutive)
    if s.feature is not None:
        sig.feature = s.feature
    else:
        sig.probe = s.probe or ""
    if s.window is not None:
        sig.window.size = s.window.size or 0
        sig.window.agg = AGG[s.window.agg]
        if s.window.above is not None:
            sig.window.above = s.window.above
    return rules_pb2.Condition(signal=sig)


def _stamp(msg: rules_pb2.Rule | rules_pb2.Policy, stored: Stored | None) -> None:
    if stored is not None:
        msg.version = stored.version
        msg.updated_at.CopyFrom(to_timestamp(stored.updated_at))
        msg.updated_by = stored.updated_by


def sae_proto(sae: SAEIdentity) -> rules_pb2.SAEIdentity:
    return rules_pb2.SAEIdentity(name=sae.name, hook=sae.hook, sha256=sae.sha256)


def rule_proto(rule: Rule, stored: Stored | None = None, inactive_reason: str | None = None
               ) -> rules_pb2.Rule:
    msg = rules_pb2.Rule(
        name=rule.name, description=rule.description, severity=SEVERITY[rule.severity],
        enabled=rule.enabled, scope=SCOPE[rule.scope], check=CHECK[rule.check],
        when=_condition_proto(rule.when),
        action=rules_pb2.Action(type=ACTION[rule.action.type]),
        inactive_reason=inactive_reason or "",
    )
    if rule.action.steer is not None:
        msg.action.steer.CopyFrom(steer_proto(rule.action.steer))
    if rule.sae is not None:
        msg.sae.CopyFrom(sae_proto(rule.sae))
    _stamp(msg, stored)
    return msg


def policy_proto(policy: Policy, stored: Stored | None = None) -> rules_pb2.Policy:
    msg = rules_pb2.Policy(
        name=policy.name, description=policy.description, rules=policy.rules,
        mode=MODE[policy.mode], on_failure=FAILURE[policy.on_failure],
        timeout_ms=policy.timeout_ms, monitoring=policy.monitoring,
    )
    _stamp(msg, stored)
    return msg


# ---- rule hits ------------------------------------------------------------------------------

def hit_proto(hit: RuleHit) -> common_pb2.RuleHit:
    return common_pb2.RuleHit(
        rule=hit.rule, severity=SEVERITY.code(hit.severity),
        action=ACTION.code(hit.action.type), position=hit.position, score=hit.score,
        explanation=hit.explanation, at=to_timestamp(hit.at),
        evidence=[common_pb2.Evidence(signal=e.signal, position=e.position, value=e.value)
                  for e in hit.evidence],
    )


# ---- verdicts -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Verdict:
    """What the sidecar tells the plugin about one request."""

    request_tag: str
    kind: Literal["block", "steer"]
    rule: str
    reason: str
    steer: Steer | None = None
    """For ``steer``: the steer to apply from the next token on."""


_VERDICT_KIND = {"block": monitor_pb2.VERDICT_KIND_BLOCK, "steer": monitor_pb2.VERDICT_KIND_STEER}


def verdict_proto(v: Verdict) -> monitor_pb2.Verdict:
    msg = monitor_pb2.Verdict(request_tag=v.request_tag, kind=_VERDICT_KIND[v.kind],
                              rule=v.rule, reason=v.reason)
    if v.steer is not None:
        msg.steer.CopyFrom(steer_proto(v.steer))
    return msg


def verdict_model(msg: monitor_pb2.Verdict, d_sae: int | None = None) -> Verdict | None:
    """The verdict, or None for CONTINUE / a kind this version does not know."""
    if msg.kind == monitor_pb2.VERDICT_KIND_BLOCK:
        return Verdict(msg.request_tag, "block", msg.rule, msg.reason)
    if msg.kind == monitor_pb2.VERDICT_KIND_STEER:
        return Verdict(msg.request_tag, "steer", msg.rule, msg.reason,
                       steer_model(msg.steer, "verdict.steer", d_sae))
    return None


# ---- tensors --------------------------------------------------------------------------------

_NUMPY_DTYPES = {common_pb2.DTYPE_FLOAT32: np.float32, common_pb2.DTYPE_FLOAT16: np.float16}
_ITEMSIZE = {common_pb2.DTYPE_FLOAT32: 4, common_pb2.DTYPE_FLOAT16: 2,
             common_pb2.DTYPE_BFLOAT16: 2}


def rows_proto(rows: torch.Tensor) -> common_pb2.Tensor:
    """[n, d] rows as float32 on the wire."""
    rows = rows.detach().float().cpu().contiguous()
    return common_pb2.Tensor(dtype=common_pb2.DTYPE_FLOAT32, shape=list(rows.shape),
                             data=rows.numpy().tobytes())


def rows_from_proto(t: common_pb2.Tensor, d_model: int, field: str = "rows") -> torch.Tensor:
    """The rows as a float32 tensor [n, d_model]; ShapeError names what is wrong (shape,
    dtype, byte count, non-finite values).

    float32 rows are a read-only view of the message's bytes (``np.frombuffer``, no copy):
    read them, never write into them; float16 and bfloat16 rows are converted once."""
    if len(t.shape) != 2:
        raise ShapeError(f"{field}.shape", f"expected [rows, {d_model}], got {list(t.shape)}")
    n, width = t.shape
    if width != d_model:
        raise ShapeError(f"{field}.shape",
                         f"width {width} does not match the SAE's d_in {d_model}")
    if t.dtype not in _ITEMSIZE:
        raise ShapeError(f"{field}.dtype", f"unsupported value {t.dtype}")
    data = t.data  # each read of a bytes field makes a new bytes object: read it once
    expected = n * width * _ITEMSIZE[t.dtype]
    if len(data) != expected:
        raise ShapeError(f"{field}.data", f"{len(data)} bytes, expected {expected} for "
                         f"shape [{n}, {width}]")
    if n == 0:
        return torch.empty(0, width)
    if t.dtype == common_pb2.DTYPE_BFLOAT16:
        view = _readonly_tensor(np.frombuffer(data, dtype=np.int16))
        array = view.view(torch.bfloat16).reshape(n, width).float().numpy()
    else:
        array = np.frombuffer(data, dtype=_NUMPY_DTYPES[t.dtype]).reshape(n, width)
        array = array.astype(np.float32, copy=False)
    # numpy's check: torch.isfinite(...).all() takes 20x longer on a few hundred rows
    if not np.isfinite(array).all():
        raise ShapeError(f"{field}.data", "contains NaN or infinity")
    return _readonly_tensor(array)


def _readonly_tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor over a read-only array, without torch's warning that it is not writable."""
    if array.flags.writeable:
        return torch.from_numpy(array)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)
