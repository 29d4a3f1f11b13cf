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

class TraceStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRACE_STATUS_UNSPECIFIED: _ClassVar[TraceStatus]
    TRACE_STATUS_CLEAN: _ClassVar[TraceStatus]
    TRACE_STATUS_FLAGGED: _ClassVar[TraceStatus]
    TRACE_STATUS_REVIEWED: _ClassVar[TraceStatus]

class ReviewLabel(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REVIEW_LABEL_UNSPECIFIED: _ClassVar[ReviewLabel]
    REVIEW_LABEL_TRUE_POSITIVE: _ClassVar[ReviewLabel]
    REVIEW_LABEL_FALSE_POSITIVE: _ClassVar[ReviewLabel]
    REVIEW_LABEL_ESCALATE: _ClassVar[ReviewLabel]
TRACE_STATUS_UNSPECIFIED: TraceStatus
TRACE_STATUS_CLEAN: TraceStatus
TRACE_STATUS_FLAGGED: TraceStatus
TRACE_STATUS_REVIEWED: TraceStatus
REVIEW_LABEL_UNSPECIFIED: ReviewLabel
REVIEW_LABEL_TRUE_POSITIVE: ReviewLabel
REVIEW_LABEL_FALSE_POSITIVE: ReviewLabel
REVIEW_LABEL_ESCALATE: ReviewLabel

class Review(_message.Message):
    __slots__ = ("label", "reviewer", "note", "at")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    REVIEWER_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    label: ReviewLabel
    reviewer: str
    note: str
    at: _timestamp_pb2.Timestamp
    def __init__(self, label: _Optional[_Union[ReviewLabel, str]] = ..., reviewer: _Optional[str] = ..., note: _Optional[str] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Trace(_message.Message):
    __slots__ = ("id", "request_tag", "model", "policy", "started_at", "ended_at", "status", "max_severity", "rules_hit", "finish_reason", "blocked", "blocked_by", "prompt_tokens", "completion_tokens", "otel_trace_id", "otel_span_id", "monitoring_gap", "prompt_text", "completion_text", "tokens", "hits", "reviews", "tokens_dropped", "hits_dropped")
    ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_TAG_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    ENDED_AT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MAX_SEVERITY_FIELD_NUMBER: _ClassVar[int]
    RULES_HIT_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    BLOCKED_FIELD_NUMBER: _ClassVar[int]
    BLOCKED_BY_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OTEL_TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    OTEL_SPAN_ID_FIELD_NUMBER: _ClassVar[int]
    MONITORING_GAP_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TEXT_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    REVIEWS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_DROPPED_FIELD_NUMBER: _ClassVar[int]
    HITS_DROPPED_FIELD_NUMBER: _ClassVar[int]
    id: str
    request_tag: str
    model: str
    policy: str
    started_at: _timestamp_pb2.Timestamp
    ended_at: _timestamp_pb2.Timestamp
    status: TraceStatus
    max_severity: _common_pb2.Severity
    rules_hit: _containers.RepeatedScalarFieldContainer[str]
    finish_reason: str
    blocked: bool
    blocked_by: str
    prompt_tokens: int
    completion_tokens: int
    otel_trace_id: str
    otel_span_id: str
    monitoring_gap: bool
    prompt_text: str
    completion_text: str
    tokens: _containers.RepeatedCompositeFieldContainer[_common_pb2.TokenRecord]
    hits: _containers.RepeatedCompositeFieldContainer[_common_pb2.RuleHit]
    reviews: _containers.RepeatedCompositeFieldContainer[Review]
    tokens_dropped: int
    hits_dropped: int
    def __init__(self, id: _Optional[str] = ..., request_tag: _Optional[str] = ..., model: _Optional[str] = ..., policy: _Optional[str] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ended_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., status: _Optional[_Union[TraceStatus, str]] = ..., max_severity: _Optional[_Union[_common_pb2.Severity, str]] = ..., rules_hit: _Optional[_Iterable[str]] = ..., finish_reason: _Optional[str] = ..., blocked: _Optional[bool] = ..., blocked_by: _Optional[str] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., otel_trace_id: _Optional[str] = ..., otel_span_id: _Optional[str] = ..., monitoring_gap: _Optional[bool] = ..., prompt_text: _Optional[str] = ..., completion_text: _Optional[str] = ..., tokens: _Optional[_Iterable[_Union[_common_pb2.TokenRecord, _Mapping]]] = ..., hits: _Optional[_Iterable[_Union[_common_pb2.RuleHit, _Mapping]]] = ..., reviews: _Optional[_Iterable[_Union[Review, _Mapping]]] = ..., tokens_dropped: _Optional[int] = ..., hits_dropped: _Optional[int] = ...) -> None: ...

class ListTracesRequest(_message.Message):
    __slots__ = ("start_time", "end_time", "rule", "min_severity", "status", "page_size", "page_token")
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    MIN_SEVERITY_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    rule: str
    min_severity: _common_pb2.Severity
    status: TraceStatus
    page_size: int
    page_token: str
    def __init__(self, start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., rule: _Optional[str] = ..., min_severity: _Optional[_Union[_common_pb2.Severity, str]] = ..., status: _Optional[_Union[TraceStatus, str]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListTracesResponse(_message.Message):
    __slots__ = ("traces", "next_page_token")
    TRACES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    traces: _containers.RepeatedCompositeFieldContainer[Trace]
    next_page_token: str
    def __init__(self, traces: _Optional[_Iterable[_Union[Trace, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetTraceRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ReviewTraceRequest(_message.Message):
    __slots__ = ("id", "label", "reviewer", "note")
    ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    REVIEWER_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    id: str
    label: ReviewLabel
    reviewer: str
    note: str
    def __init__(self, id: _Optional[str] = ..., label: _Optional[_Union[ReviewLabel, str]] = ..., reviewer: _Optional[str] = ..., note: _Optional[str] = ...) -> None: ...

class StreamAlertsRequest(_message.Message):
    __slots__ = ("min_severity", "rules", "consumer_group", "consumer", "after_id")
    MIN_SEVERITY_FIELD_NUMBER: _ClassVar[int]
    RULES_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_GROUP_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_FIELD_NUMBER: _ClassVar[int]
    AFTER_ID_FIELD_NUMBER: _ClassVar[int]
    min_severity: _common_pb2.Severity
    rules: _containers.RepeatedScalarFieldContainer[str]
    consumer_group: str
    consumer: str
    after_id: str
    def __init__(self, min_severity: _Optional[_Union[_common_pb2.Severity, str]] = ..., rules: _Optional[_Iterable[str]] = ..., consumer_group: _Optional[str] = ..., consumer: _Optional[str] = ..., after_id: _Optional[str] = ...) -> None: ...

class Alert(_message.Message):
    __slots__ = ("id", "trace_id", "request_tag", "model", "policy", "hit", "consumer_group")
    ID_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_TAG_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    HIT_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_GROUP_FIELD_NUMBER: _ClassVar[int]
    id: str
    trace_id: str
    request_tag: str
    model: str
    policy: str
    hit: _common_pb2.RuleHit
    consumer_group: str
    def __init__(self, id: _Optional[str] = ..., trace_id: _Optional[str] = ..., request_tag: _Optional[str] = ..., model: _Optional[str] = ..., policy: _Optional[str] = ..., hit: _Optional[_Union[_common_pb2.RuleHit, _Mapping]] = ..., consumer_group: _Optional[str] = ...) -> None: ...

class AckAlertsRequest(_message.Message):
    __slots__ = ("consumer_group", "ids")
    CONSUMER_GROUP_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    consumer_group: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, consumer_group: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ...) -> None: ...

class AckAlertsResponse(_message.Message):
    __slots__ = ("acked",)
    ACKED_FIELD_NUMBER: _ClassVar[int]
    acked: int
    def __init__(self, acked: _Optional[int] = ...) -> None: ...
