"""What the store keeps: versioned rules and policies, traces, reviews and alerts.

These are the server's own pydantic models (a rule hit is the engine's `RuleHit`); the wire
types live in proto/ and are converted at the gRPC edge (`latentguard.wire`,
`latentguard.server.convert`).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from latentguard.monitors.rules import RuleHit, severity_rank

TraceStatus = Literal["clean", "flagged", "reviewed"]
ReviewLabel = Literal["true_positive", "false_positive", "escalate"]
ObjectKind = Literal["rule", "policy"]


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_trace_id(at: datetime | None = None) -> str:
    """Time-ordered id: 13 hex digits of milliseconds, then 12 random hex digits.

    Sorting ids sorts traces by start time, which the store's indexes rely on.
    """
    ms = int((at or utcnow()).timestamp() * 1000)
    return f"{ms:013x}{os.urandom(6).hex()}"


def trace_id_time(trace_id: str) -> datetime:
    return datetime.fromtimestamp(int(trace_id[:13], 16) / 1000, UTC)


class Versioned(BaseModel):
    """A rule or policy as stored: its validated spec plus the store's bookkeeping."""

    model_config = ConfigDict(frozen=True)
    kind: ObjectKind
    name: str
    version: int
    spec: dict[str, Any]
    updated_at: datetime
    updated_by: str = ""


class FeatureValue(BaseModel):
    feature: int
    value: float


class TokenRecord(BaseModel):
    position: int
    token_id: int
    text: str = ""
    prompt: bool = False
    top_features: list[FeatureValue] = []
    signals: dict[str, float] = {}
    """The token's own value of each signal the rules read (``feature 123``, ``probe
    deception``; the names of hit evidence), before any window; what the review console
    shades tokens by. Empty in traces stored before it was recorded."""


class ReviewRecord(BaseModel):
    label: ReviewLabel
    reviewer: str
    note: str = ""
    at: datetime = Field(default_factory=utcnow)


class TraceRecord(BaseModel):
    """One monitored request."""

    id: str = Field(default_factory=new_trace_id, pattern=r"^[0-9a-f]{25}$")
    request_tag: str = ""
    model: str = ""
    policy: str = ""
    started_at: datetime = Field(default_factory=utcnow)
    ended_at: datetime | None = None
    finish_reason: str = ""
    blocked: bool = False
    blocked_by: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    otel_trace_id: str = ""
    otel_span_id: str = ""
    monitoring_gap: bool = False
    prompt_text: str = ""
    completion_text: str = ""
    tokens: list[TokenRecord] = []
    hits: list[RuleHit] = []
    reviews: list[ReviewRecord] = []
    status: TraceStatus = "clean"
    tokens_dropped: int = 0
    """Tokens monitored but not kept: past the `max_tokens_per_request` setting."""
    hits_dropped: int = 0
    """Rule hits found (and published as alerts) but not kept: past the same setting."""

    @property
    def truncated(self) -> bool:
        """The trace reached `max_tokens_per_request` and dropped tokens or hits."""
        return bool(self.tokens_dropped or self.hits_dropped)

    @property
    def rules_hit(self) -> list[str]:
        return sorted({h.rule for h in self.hits})

    @property
    def max_severity(self) -> str:
        return max((h.severity for h in self.hits), key=severity_rank, default="")

    def summary(self) -> TraceRecord:
        """The record without its per-token detail (what listings return)."""
        return self.model_copy(update={"tokens": []})


class AlertRecord(BaseModel):
    """One rule hit as published on the alert stream."""

    id: str = ""
    trace_id: str
    request_tag: str = ""
    model: str = ""
    policy: str = ""
    hit: RuleHit


class TraceFilter(BaseModel):
    start: datetime | None = None
    end: datetime | None = None
    rule: str = ""
    min_severity: str = ""
    status: TraceStatus | None = None
    page_size: int = Field(default=50, ge=1, le=1000)
    page_token: str = ""


