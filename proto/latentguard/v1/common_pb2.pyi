import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Severity(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SEVERITY_UNSPECIFIED: _ClassVar[Severity]
    SEVERITY_INFO: _ClassVar[Severity]
    SEVERITY_LOW: _ClassVar[Severity]
    SEVERITY_MEDIUM: _ClassVar[Severity]
    SEVERITY_HIGH: _ClassVar[Severity]
    SEVERITY_CRITICAL: _ClassVar[Severity]

class ActionType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACTION_TYPE_UNSPECIFIED: _ClassVar[ActionType]
    ACTION_TYPE_ALERT: _ClassVar[ActionType]
    ACTION_TYPE_BLOCK: _ClassVar[ActionType]
    ACTION_TYPE_STEER: _ClassVar[ActionType]

class SteerMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STEER_MODE_UNSPECIFIED: _ClassVar[SteerMode]
    STEER_MODE_ADD: _ClassVar[SteerMode]
    STEER_MODE_CLAMP: _ClassVar[SteerMode]
    STEER_MODE_ABLATE: _ClassVar[SteerMode]

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    DTYPE_FLOAT32: _ClassVar[DType]
    DTYPE_FLOAT16: _ClassVar[DType]
    DTYPE_BFLOAT16: _ClassVar[DType]
SEVERITY_UNSPECIFIED: Severity
SEVERITY_INFO: Severity
SEVERITY_LOW: Severity
SEVERITY_MEDIUM: Severity
SEVERITY_HIGH: Severity
SEVERITY_CRITICAL: Severity
ACTION_TYPE_UNSPECIFIED: ActionType
ACTION_TYPE_ALERT: ActionType
ACTION_TYPE_BLOCK: ActionType
ACTION_TYPE_STEER: ActionType
STEER_MODE_UNSPECIFIED: SteerMode
STEER_MODE_ADD: SteerMode
STEER_MODE_CLAMP: SteerMode
STEER_MODE_ABLATE: SteerMode
DTYPE_UNSPECIFIED: DType
DTYPE_FLOAT32: DType
DTYPE_FLOAT16: DType
DTYPE_BFLOAT16: DType

class SteerFeature(_message.Message):
    __slots__ = ("feature", "value")
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    feature: int
    value: float
    def __init__(self, feature: _Optional[int] = ..., value: _Optional[float] = ...) -> None: ...

class Steer(_message.Message):
    __slots__ = ("mode", "features", "tokens", "preserve_norm")
    MODE_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    PRESERVE_NORM_FIELD_NUMBER: _ClassVar[int]
    mode: SteerMode
    features: _containers.RepeatedCompositeFieldContainer[SteerFeature]
    tokens: int
    preserve_norm: bool
    def __init__(self, mode: _Optional[_Union[SteerMode, str]] = ..., features: _Optional[_Iterable[_Union[SteerFeature, _Mapping]]] = ..., tokens: _Optional[int] = ..., preserve_norm: _Optional[bool] = ...) -> None: ...

class FeatureActivation(_message.Message):
    __slots__ = ("feature", "value", "label")
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    feature: int
    value: float
    label: str
    def __init__(self, feature: _Optional[int] = ..., value: _Optional[float] = ..., label: _Optional[str] = ...) -> None: ...

class TokenRecord(_message.Message):
    __slots__ = ("position", "token_id", "text", "prompt", "top_features")
    POSITION_FIELD_NUMBER: _ClassVar[int]
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    TOP_FEATURES_FIELD_NUMBER: _ClassVar[int]
    position: int
    token_id: int
    text: str
    prompt: bool
    top_features: _containers.RepeatedCompositeFieldContainer[FeatureActivation]
    def __init__(self, position: _Optional[int] = ..., token_id: _Optional[int] = ..., text: _Optional[str] = ..., prompt: _Optional[bool] = ..., top_features: _Optional[_Iterable[_Union[FeatureActivation, _Mapping]]] = ...) -> None: ...

class Evidence(_message.Message):
    __slots__ = ("signal", "position", "value")
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    signal: str
    position: int
    value: float
    def __init__(self, signal: _Optional[str] = ..., position: _Optional[int] = ..., value: _Optional[float] = ...) -> None: ...

class RuleHit(_message.Message):
    __slots__ = ("rule", "severity", "action", "position", "score", "explanation", "evidence", "at")
    RULE_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    rule: str
    severity: Severity
    action: ActionType
    position: int
    score: float
    explanation: str
    evidence: _containers.RepeatedCompositeFieldContainer[Evidence]
    at: _timestamp_pb2.Timestamp
    def __init__(self, rule: _Optional[str] = ..., severity: _Optional[_Union[Severity, str]] = ..., action: _Optional[_Union[ActionType, str]] = ..., position: _Optional[int] = ..., score: _Optional[float] = ..., explanation: _Optional[str] = ..., evidence: _Optional[_Iterable[_Union[Evidence, _Mapping]]] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "data")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    dtype: DType
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, dtype: _Optional[_Union[DType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...
