from latentguard.v1 import common_pb2 as _common_pb2
from latentguard.v1 import rules_pb2 as _rules_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class VerdictKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VERDICT_KIND_UNSPECIFIED: _ClassVar[VerdictKind]
    VERDICT_KIND_CONTINUE: _ClassVar[VerdictKind]
    VERDICT_KIND_BLOCK: _ClassVar[VerdictKind]
    VERDICT_KIND_STEER: _ClassVar[VerdictKind]
VERDICT_KIND_UNSPECIFIED: VerdictKind
VERDICT_KIND_CONTINUE: VerdictKind
VERDICT_KIND_BLOCK: VerdictKind
VERDICT_KIND_STEER: VerdictKind

class MonitorMessage(_message.Message):
    __slots__ = ("hello", "step")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    step: StepBatch
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., step: _Optional[_Union[StepBatch, _Mapping]] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("client", "model", "hook_name", "d_model")
    CLIENT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    HOOK_NAME_FIELD_NUMBER: _ClassVar[int]
    D_MODEL_FIELD_NUMBER: _ClassVar[int]
    client: str
    model: str
    hook_name: str
    d_model: int
    def __init__(self, client: _Optional[str] = ..., model: _Optional[str] = ..., hook_name: _Optional[str] = ..., d_model: _Optional[int] = ...) -> None: ...

class RequestStart(_message.Message):
    __slots__ = ("request_tag", "policy", "model", "prompt_tokens", "prompt_text", "steer")
    REQUEST_TAG_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TEXT_FIELD_NUMBER: _ClassVar[int]
    STEER_FIELD_NUMBER: _ClassVar[int]
    request_tag: str
    policy: str
    model: str
    prompt_tokens: int
    prompt_text: str
    steer: _common_pb2.Steer
    def __init__(self, request_tag: _Optional[str] = ..., policy: _Optional[str] = ..., model: _Optional[str] = ..., prompt_tokens: _Optional[int] = ..., prompt_text: _Optional[str] = ..., steer: _Optional[_Union[_common_pb2.Steer, _Mapping]] = ...) -> None: ...

class RowSpan(_message.Message):
    __slots__ = ("request_tag", "row_start", "positions", "token_ids", "prefill")
    REQUEST_TAG_FIELD_NUMBER: _ClassVar[int]
    ROW_START_FIELD_NUMBER: _ClassVar[int]
    POSITIONS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    PREFILL_FIELD_NUMBER: _ClassVar[int]
    request_tag: str
    row_start: int
    positions: _containers.RepeatedScalarFieldContainer[int]
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    prefill: bool
    def __init__(self, request_tag: _Optional[str] = ..., row_start: _Optional[int] = ..., positions: _Optional[_Iterable[int]] = ..., token_ids: _Optional[_Iterable[int]] = ..., prefill: _Optional[bool] = ...) -> None: ...

class RequestEnd(_message.Message):
    __slots__ = ("request_tag", "finish_reason", "completion_tokens", "completion_text", "monitoring_gap")
    REQUEST_TAG_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TEXT_FIELD_NUMBER: _ClassVar[int]
    MONITORING_GAP_FIELD_NUMBER: _ClassVar[int]
    request_tag: str
    finish_reason: str
    completion_tokens: int
    completion_text: str
    monitoring_gap: bool
    def __init__(self, request_tag: _Optional[str] = ..., finish_reason: _Optional[str] = ..., completion_tokens: _Optional[int] = ..., completion_text: _Optional[str] = ..., monitoring_gap: _Optional[bool] = ...) -> None: ...

class StepBatch(_message.Message):
    __slots__ = ("step", "started", "spans", "rows", "finished")
    STEP_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    SPANS_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    step: int
    started: _containers.RepeatedCompositeFieldContainer[RequestStart]
    spans: _containers.RepeatedCompositeFieldContainer[RowSpan]
    rows: _common_pb2.Tensor
    finished: _containers.RepeatedCompositeFieldContainer[RequestEnd]
    def __init__(self, step: _Optional[int] = ..., started: _Optional[_Iterable[_Union[RequestStart, _Mapping]]] = ..., spans: _Optional[_Iterable[_Union[RowSpan, _Mapping]]] = ..., rows: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., finished: _Optional[_Iterable[_Union[RequestEnd, _Mapping]]] = ...) -> None: ...

class Verdict(_message.Message):
    __slots__ = ("request_tag", "kind", "rule", "reason", "steer")
    REQUEST_TAG_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    STEER_FIELD_NUMBER: _ClassVar[int]
    request_tag: str
    kind: VerdictKind
    rule: str
    reason: str
    steer: _common_pb2.Steer
    def __init__(self, request_tag: _Optional[str] = ..., kind: _Optional[_Union[VerdictKind, str]] = ..., rule: _Optional[str] = ..., reason: _Optional[str] = ..., steer: _Optional[_Union[_common_pb2.Steer, _Mapping]] = ...) -> None: ...

class MonitorReply(_message.Message):
    __slots__ = ("ready", "verdicts", "error")
    READY_FIELD_NUMBER: _ClassVar[int]
    VERDICTS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ready: Ready
    verdicts: StepVerdicts
    error: BatchError
    def __init__(self, ready: _Optional[_Union[Ready, _Mapping]] = ..., verdicts: _Optional[_Union[StepVerdicts, _Mapping]] = ..., error: _Optional[_Union[BatchError, _Mapping]] = ...) -> None: ...

class Ready(_message.Message):
    __slots__ = ("sae_hook_name", "layer", "d_model", "d_sae", "server_version", "policies", "default_policy", "policy_revision")
    SAE_HOOK_NAME_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    D_MODEL_FIELD_NUMBER: _ClassVar[int]
    D_SAE_FIELD_NUMBER: _ClassVar[int]
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    POLICIES_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_POLICY_FIELD_NUMBER: _ClassVar[int]
    POLICY_REVISION_FIELD_NUMBER: _ClassVar[int]
    sae_hook_name: str
    layer: int
    d_model: int
    d_sae: int
    server_version: str
    policies: _containers.RepeatedCompositeFieldContainer[_rules_pb2.Policy]
    default_policy: str
    policy_revision: int
    def __init__(self, sae_hook_name: _Optional[str] = ..., layer: _Optional[int] = ..., d_model: _Optional[int] = ..., d_sae: _Optional[int] = ..., server_version: _Optional[str] = ..., policies: _Optional[_Iterable[_Union[_rules_pb2.Policy, _Mapping]]] = ..., default_policy: _Optional[str] = ..., policy_revision: _Optional[int] = ...) -> None: ...

class StepVerdicts(_message.Message):
    __slots__ = ("step", "verdicts", "policies", "policy_revision")
    STEP_FIELD_NUMBER: _ClassVar[int]
    VERDICTS_FIELD_NUMBER: _ClassVar[int]
    POLICIES_FIELD_NUMBER: _ClassVar[int]
    POLICY_REVISION_FIELD_NUMBER: _ClassVar[int]
    step: int
    verdicts: _containers.RepeatedCompositeFieldContainer[Verdict]
    policies: _containers.RepeatedCompositeFieldContainer[_rules_pb2.Policy]
    policy_revision: int
    def __init__(self, step: _Optional[int] = ..., verdicts: _Optional[_Iterable[_Union[Verdict, _Mapping]]] = ..., policies: _Optional[_Iterable[_Union[_rules_pb2.Policy, _Mapping]]] = ..., policy_revision: _Optional[int] = ...) -> None: ...

class BatchError(_message.Message):
    __slots__ = ("step", "code", "field", "message")
    STEP_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    step: int
    code: str
    field: str
    message: str
    def __init__(self, step: _Optional[int] = ..., code: _Optional[str] = ..., field: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class InspectRequest(_message.Message):
    __slots__ = ("text", "top_k", "features", "policy")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    text: str
    top_k: int
    features: _containers.RepeatedScalarFieldContainer[int]
    policy: str
    def __init__(self, text: _Optional[str] = ..., top_k: _Optional[int] = ..., features: _Optional[_Iterable[int]] = ..., policy: _Optional[str] = ...) -> None: ...

class FeatureSeries(_message.Message):
    __slots__ = ("feature", "values")
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    feature: int
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, feature: _Optional[int] = ..., values: _Optional[_Iterable[float]] = ...) -> None: ...

class InspectResponse(_message.Message):
    __slots__ = ("trace_id", "tokens", "hits", "series")
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    SERIES_FIELD_NUMBER: _ClassVar[int]
    trace_id: str
    tokens: _containers.RepeatedCompositeFieldContainer[_common_pb2.TokenRecord]
    hits: _containers.RepeatedCompositeFieldContainer[_common_pb2.RuleHit]
    series: _containers.RepeatedCompositeFieldContainer[FeatureSeries]
    def __init__(self, trace_id: _Optional[str] = ..., tokens: _Optional[_Iterable[_Union[_common_pb2.TokenRecord, _Mapping]]] = ..., hits: _Optional[_Iterable[_Union[_common_pb2.RuleHit, _Mapping]]] = ..., series: _Optional[_Iterable[_Union[FeatureSeries, _Mapping]]] = ...) -> None: ...

class ChatMessage(_message.Message):
    __slots__ = ("role", "content")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    role: str
    content: str
    def __init__(self, role: _Optional[str] = ..., content: _Optional[str] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("prompt", "chat", "max_tokens", "temperature", "policy", "steer", "top_k", "seed")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    CHAT_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    STEER_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    chat: Messages
    max_tokens: int
    temperature: float
    policy: str
    steer: _common_pb2.Steer
    top_k: int
    seed: int
    def __init__(self, prompt: _Optional[str] = ..., chat: _Optional[_Union[Messages, _Mapping]] = ..., max_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., policy: _Optional[str] = ..., steer: _Optional[_Union[_common_pb2.Steer, _Mapping]] = ..., top_k: _Optional[int] = ..., seed: _Optional[int] = ...) -> None: ...

class Messages(_message.Message):
    __slots__ = ("messages",)
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[ChatMessage]
    def __init__(self, messages: _Optional[_Iterable[_Union[ChatMessage, _Mapping]]] = ...) -> None: ...

class GenerateEvent(_message.Message):
    __slots__ = ("token", "features", "hit", "verdict", "finish")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    HIT_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    FINISH_FIELD_NUMBER: _ClassVar[int]
    token: GeneratedToken
    features: _common_pb2.TokenRecord
    hit: _common_pb2.RuleHit
    verdict: Verdict
    finish: Finish
    def __init__(self, token: _Optional[_Union[GeneratedToken, _Mapping]] = ..., features: _Optional[_Union[_common_pb2.TokenRecord, _Mapping]] = ..., hit: _Optional[_Union[_common_pb2.RuleHit, _Mapping]] = ..., verdict: _Optional[_Union[Verdict, _Mapping]] = ..., finish: _Optional[_Union[Finish, _Mapping]] = ...) -> None: ...

class GeneratedToken(_message.Message):
    __slots__ = ("index", "text")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    index: int
    text: str
    def __init__(self, index: _Optional[int] = ..., text: _Optional[str] = ...) -> None: ...

class Finish(_message.Message):
    __slots__ = ("reason", "blocked_by", "trace_id")
    REASON_FIELD_NUMBER: _ClassVar[int]
    BLOCKED_BY_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    reason: str
    blocked_by: str
    trace_id: str
    def __init__(self, reason: _Optional[str] = ..., blocked_by: _Optional[str] = ..., trace_id: _Optional[str] = ...) -> None: ...
