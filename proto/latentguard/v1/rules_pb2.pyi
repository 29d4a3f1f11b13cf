import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from latentguard.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Scope(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SCOPE_UNSPECIFIED: _ClassVar[Scope]
    SCOPE_PROMPT: _ClassVar[Scope]
    SCOPE_GENERATION: _ClassVar[Scope]
    SCOPE_BOTH: _ClassVar[Scope]

class Check(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHECK_UNSPECIFIED: _ClassVar[Check]
    CHECK_TOKEN: _ClassVar[Check]
    CHECK_END: _ClassVar[Check]

class Aggregation(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AGGREGATION_UNSPECIFIED: _ClassVar[Aggregation]
    AGGREGATION_MAX: _ClassVar[Aggregation]
    AGGREGATION_MEAN: _ClassVar[Aggregation]
    AGGREGATION_SUM: _ClassVar[Aggregation]
    AGGREGATION_COUNT: _ClassVar[Aggregation]

class Comparison(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COMPARISON_UNSPECIFIED: _ClassVar[Comparison]
    COMPARISON_GT: _ClassVar[Comparison]
    COMPARISON_GE: _ClassVar[Comparison]
    COMPARISON_LT: _ClassVar[Comparison]
    COMPARISON_LE: _ClassVar[Comparison]

class MonitorMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MONITOR_MODE_UNSPECIFIED: _ClassVar[MonitorMode]
    MONITOR_MODE_SYNC: _ClassVar[MonitorMode]
    MONITOR_MODE_ASYNC: _ClassVar[MonitorMode]

class FailureMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FAILURE_MODE_UNSPECIFIED: _ClassVar[FailureMode]
    FAILURE_MODE_OPEN: _ClassVar[FailureMode]
    FAILURE_MODE_CLOSED: _ClassVar[FailureMode]
SCOPE_UNSPECIFIED: Scope
SCOPE_PROMPT: Scope
SCOPE_GENERATION: Scope
SCOPE_BOTH: Scope
CHECK_UNSPECIFIED: Check
CHECK_TOKEN: Check
CHECK_END: Check
AGGREGATION_UNSPECIFIED: Aggregation
AGGREGATION_MAX: Aggregation
AGGREGATION_MEAN: Aggregation
AGGREGATION_SUM: Aggregation
AGGREGATION_COUNT: Aggregation
COMPARISON_UNSPECIFIED: Comparison
COMPARISON_GT: Comparison
COMPARISON_GE: Comparison
COMPARISON_LT: Comparison
COMPARISON_LE: Comparison
MONITOR_MODE_UNSPECIFIED: MonitorMode
MONITOR_MODE_SYNC: MonitorMode
MONITOR_MODE_ASYNC: MonitorMode
FAILURE_MODE_UNSPECIFIED: FailureMode
FAILURE_MODE_OPEN: FailureMode
FAILURE_MODE_CLOSED: FailureMode

class Window(_message.Message):
    __slots__ = ("size", "agg", "above")
    SIZE_FIELD_NUMBER: _ClassVar[int]
    AGG_FIELD_NUMBER: _ClassVar[int]
    ABOVE_FIELD_NUMBER: _ClassVar[int]
    size: int
    agg: Aggregation
    above: float
    def __init__(self, size: _Optional[int] = ..., agg: _Optional[_Union[Aggregation, str]] = ..., above: _Optional[float] = ...) -> None: ...

class Signal(_message.Message):
    __slots__ = ("feature", "probe", "op", "threshold", "window", "consecutive")
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    PROBE_FIELD_NUMBER: _ClassVar[int]
    OP_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    CONSECUTIVE_FIELD_NUMBER: _ClassVar[int]
    feature: int
    probe: str
    op: Comparison
    threshold: float
    window: Window
    consecutive: int
    def __init__(self, feature: _Optional[int] = ..., probe: _Optional[str] = ..., op: _Optional[_Union[Comparison, str]] = ..., threshold: _Optional[float] = ..., window: _Optional[_Union[Window, _Mapping]] = ..., consecutive: _Optional[int] = ...) -> None: ...

class Conditions(_message.Message):
    __slots__ = ("conditions",)
    CONDITIONS_FIELD_NUMBER: _ClassVar[int]
    conditions: _containers.RepeatedCompositeFieldContainer[Condition]
    def __init__(self, conditions: _Optional[_Iterable[_Union[Condition, _Mapping]]] = ...) -> None: ...

class Condition(_message.Message):
    __slots__ = ("signal", "all", "any")
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELD_NUMBER: _ClassVar[int]
    ANY_FIELD_NUMBER: _ClassVar[int]
    signal: Signal
    all: Conditions
    any: Conditions
    def __init__(self, signal: _Optional[_Union[Signal, _Mapping]] = ..., all: _Optional[_Union[Conditions, _Mapping]] = ..., any: _Optional[_Union[Conditions, _Mapping]] = ...) -> None: ...

class Action(_message.Message):
    __slots__ = ("type", "steer")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    STEER_FIELD_NUMBER: _ClassVar[int]
    type: _common_pb2.ActionType
    steer: _common_pb2.Steer
    def __init__(self, type: _Optional[_Union[_common_pb2.ActionType, str]] = ..., steer: _Optional[_Union[_common_pb2.Steer, _Mapping]] = ...) -> None: ...

class SAEIdentity(_message.Message):
    __slots__ = ("name", "hook", "sha256")
    NAME_FIELD_NUMBER: _ClassVar[int]
    HOOK_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    name: str
    hook: str
    sha256: str
    def __init__(self, name: _Optional[str] = ..., hook: _Optional[str] = ..., sha256: _Optional[str] = ...) -> None: ...

class Rule(_message.Message):
    __slots__ = ("name", "description", "severity", "enabled", "scope", "when", "action", "version", "updated_at", "updated_by", "sae", "inactive_reason", "check")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    WHEN_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_BY_FIELD_NUMBER: _ClassVar[int]
    SAE_FIELD_NUMBER: _ClassVar[int]
    INACTIVE_REASON_FIELD_NUMBER: _ClassVar[int]
    CHECK_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    severity: _common_pb2.Severity
    enabled: bool
    scope: Scope
    when: Condition
    action: Action
    version: int
    updated_at: _timestamp_pb2.Timestamp
    updated_by: str
    sae: SAEIdentity
    inactive_reason: str
    check: Check
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., severity: _Optional[_Union[_common_pb2.Severity, str]] = ..., enabled: _Optional[bool] = ..., scope: _Optional[_Union[Scope, str]] = ..., when: _Optional[_Union[Condition, _Mapping]] = ..., action: _Optional[_Union[Action, _Mapping]] = ..., version: _Optional[int] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_by: _Optional[str] = ..., sae: _Optional[_Union[SAEIdentity, _Mapping]] = ..., inactive_reason: _Optional[str] = ..., check: _Optional[_Union[Check, str]] = ...) -> None: ...

class Policy(_message.Message):
    __slots__ = ("name", "description", "rules", "mode", "on_failure", "timeout_ms", "monitoring", "version", "updated_at", "updated_by")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    RULES_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    ON_FAILURE_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    MONITORING_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_BY_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    rules: _containers.RepeatedScalarFieldContainer[str]
    mode: MonitorMode
    on_failure: FailureMode
    timeout_ms: int
    monitoring: bool
    version: int
    updated_at: _timestamp_pb2.Timestamp
    updated_by: str
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., rules: _Optional[_Iterable[str]] = ..., mode: _Optional[_Union[MonitorMode, str]] = ..., on_failure: _Optional[_Union[FailureMode, str]] = ..., timeout_ms: _Optional[int] = ..., monitoring: _Optional[bool] = ..., version: _Optional[int] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_by: _Optional[str] = ...) -> None: ...

class ListRulesRequest(_message.Message):
    __slots__ = ("enabled_only",)
    ENABLED_ONLY_FIELD_NUMBER: _ClassVar[int]
    enabled_only: bool
    def __init__(self, enabled_only: _Optional[bool] = ...) -> None: ...

class ListRulesResponse(_message.Message):
    __slots__ = ("rules", "revision", "sae")
    RULES_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    SAE_FIELD_NUMBER: _ClassVar[int]
    rules: _containers.RepeatedCompositeFieldContainer[Rule]
    revision: int
    sae: SAEIdentity
    def __init__(self, rules: _Optional[_Iterable[_Union[Rule, _Mapping]]] = ..., revision: _Optional[int] = ..., sae: _Optional[_Union[SAEIdentity, _Mapping]] = ...) -> None: ...

class GetRuleRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ValidateRuleRequest(_message.Message):
    __slots__ = ("rule", "yaml", "source", "bind_to_current_sae")
    RULE_FIELD_NUMBER: _ClassVar[int]
    YAML_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    BIND_TO_CURRENT_SAE_FIELD_NUMBER: _ClassVar[int]
    rule: Rule
    yaml: str
    source: str
    bind_to_current_sae: bool
    def __init__(self, rule: _Optional[_Union[Rule, _Mapping]] = ..., yaml: _Optional[str] = ..., source: _Optional[str] = ..., bind_to_current_sae: _Optional[bool] = ...) -> None: ...

class ValidationProblem(_message.Message):
    __slots__ = ("field", "problem", "line")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_FIELD_NUMBER: _ClassVar[int]
    LINE_FIELD_NUMBER: _ClassVar[int]
    field: str
    problem: str
    line: int
    def __init__(self, field: _Optional[str] = ..., problem: _Optional[str] = ..., line: _Optional[int] = ...) -> None: ...

class ValidateRuleResponse(_message.Message):
    __slots__ = ("valid", "problems", "rules", "policies")
    VALID_FIELD_NUMBER: _ClassVar[int]
    PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    RULES_FIELD_NUMBER: _ClassVar[int]
    POLICIES_FIELD_NUMBER: _ClassVar[int]
    valid: bool
    problems: _containers.RepeatedCompositeFieldContainer[ValidationProblem]
    rules: _containers.RepeatedCompositeFieldContainer[Rule]
    policies: _containers.RepeatedCompositeFieldContainer[Policy]
    def __init__(self, valid: _Optional[bool] = ..., problems: _Optional[_Iterable[_Union[ValidationProblem, _Mapping]]] = ..., rules: _Optional[_Iterable[_Union[Rule, _Mapping]]] = ..., policies: _Optional[_Iterable[_Union[Policy, _Mapping]]] = ...) -> None: ...

class PutRuleRequest(_message.Message):
    __slots__ = ("rule", "expected_version", "bind_to_current_sae")
    RULE_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    BIND_TO_CURRENT_SAE_FIELD_NUMBER: _ClassVar[int]
    rule: Rule
    expected_version: int
    bind_to_current_sae: bool
    def __init__(self, rule: _Optional[_Union[Rule, _Mapping]] = ..., expected_version: _Optional[int] = ..., bind_to_current_sae: _Optional[bool] = ...) -> None: ...

class DeleteRuleRequest(_message.Message):
    __slots__ = ("name", "expected_version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    expected_version: int
    def __init__(self, name: _Optional[str] = ..., expected_version: _Optional[int] = ...) -> None: ...

class DeleteRuleResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListPoliciesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListPoliciesResponse(_message.Message):
    __slots__ = ("policies", "revision")
    POLICIES_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    policies: _containers.RepeatedCompositeFieldContainer[Policy]
    revision: int
    def __init__(self, policies: _Optional[_Iterable[_Union[Policy, _Mapping]]] = ..., revision: _Optional[int] = ...) -> None: ...

class GetPolicyRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class PutPolicyRequest(_message.Message):
    __slots__ = ("policy", "expected_version")
    POLICY_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    policy: Policy
    expected_version: int
    def __init__(self, policy: _Optional[_Union[Policy, _Mapping]] = ..., expected_version: _Optional[int] = ...) -> None: ...

class DeletePolicyRequest(_message.Message):
    __slots__ = ("name", "expected_version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    expected_version: int
    def __init__(self, name: _Optional[str] = ..., expected_version: _Optional[int] = ...) -> None: ...

class DeletePolicyResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
