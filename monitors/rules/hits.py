"""A rule hit: the one type for "rule R fired at token T", from the engine to the trace store,
the alert stream and the wire."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from latentguard.monitors.rules.schema import Action, Severity

__all__ = ["Evidence", "RuleHit"]


def _now() -> datetime:
    return datetime.now(UTC)


class Evidence(BaseModel):
    """One signal that held when the rule fired."""

    model_config = ConfigDict(frozen=True)
    signal: str
    """``feature 123`` or ``probe deception``."""
    position: int
    """The token that explains the value (for a ``max`` window, the one holding the max)."""
    value: float


class RuleHit(BaseModel):
    model_config = ConfigDict(frozen=True)
    rule: str
    severity: Severity
    action: Action
    """The rule's action (with its steer, for ``steer``)."""
    position: int
    """Position of the token on which the rule fired."""
    score: float
    """The value of the first signal that holds (depth first)."""
    explanation: str
    evidence: tuple[Evidence, ...] = ()
    at: datetime = Field(default_factory=_now)

    @field_validator("action", mode="before")
    @classmethod
    def _stored_action_type(cls, value: Any) -> Any:
        # Traces stored before hits carried the whole action kept only its type.
        return {"type": value} if isinstance(value, str) else value
