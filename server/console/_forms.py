"""The console's query strings and forms, checked at the HTTP edge (pydantic)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from latentguard.monitors.rules import SEVERITY_ORDER
from latentguard.server.records import ReviewLabel, TraceFilter
from latentguard.server.rule_stats import parse_duration
from latentguard.server.services.traces import MAX_NAME, MAX_NOTE, MAX_TOKEN

__all__ = ["PERIODS", "AlertQuery", "ListQuery", "ReviewForm", "StatsQuery", "parse_period"]

#: Periods offered by the filters, as shown.
PERIODS: dict[str, timedelta | None] = {
    "1h": timedelta(hours=1), "24h": timedelta(days=1), "7d": timedelta(days=7),
    "30d": timedelta(days=30), "all": None,
}
PAGE_SIZE = 50


def parse_period(value: str) -> timedelta | None:
    """`1h`, `24h`, `7d`, `30d`, `all` (None) or any `<n>m|h|d`."""
    if value in PERIODS:
        return PERIODS[value]
    return parse_duration(value)


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)  # a datetime-local input: read as UTC, as shown
    return value


class _Query(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)


class ListQuery(_Query):
    """The flagged traces list: filters and the page."""

    rule: str = Field(default="", max_length=MAX_NAME)
    severity: Literal["", "info", "low", "medium", "high", "critical"] = ""
    status: Literal["", "flagged", "reviewed"] = ""
    period: str = "7d"
    start: datetime | None = None
    end: datetime | None = None
    page: str = Field(default="", max_length=MAX_TOKEN, pattern=r"^[0-9a-f]*$")
    size: int = Field(default=PAGE_SIZE, ge=1, le=200)

    @field_validator("period")
    @classmethod
    def _period(cls, v: str) -> str:
        parse_period(v or "7d")
        return v or "7d"

    @field_validator("start", "end", mode="before")
    @classmethod
    def _blank(cls, v: object) -> object:
        return None if v == "" else v

    def trace_filter(self, now: datetime) -> TraceFilter:
        """Traces with a hit (of at least `severity`), newest first. An explicit start wins
        over the period, which otherwise counts back from the end (or now)."""
        start, end = _aware(self.start), _aware(self.end)
        if start is None:
            back = parse_period(self.period)
            start = (end or now) - back if back is not None else None
        if start is not None and end is not None and start >= end:
            raise ValueError("start: must be before end")
        return TraceFilter(start=start, end=end, rule=self.rule,
                           min_severity=self.severity or SEVERITY_ORDER[0],
                           status=self.status or None, page_size=self.size,
                           page_token=self.page)


class StatsQuery(_Query):
    period: str = "7d"
    bucket: str = ""

    @field_validator("period")
    @classmethod
    def _period(cls, v: str) -> str:
        if parse_period(v or "7d") is None:
            raise ValueError("period: the stats need a bounded period (like 7d)")
        return v or "7d"

    @field_validator("bucket")
    @classmethod
    def _bucket(cls, v: str) -> str:
        if v and parse_period(v) is None:
            raise ValueError("bucket: like 1h or 1d")
        return v


class AlertQuery(_Query):
    severity: Literal["", "info", "low", "medium", "high", "critical"] = ""
    rule: str = Field(default="", max_length=MAX_NAME)


class ReviewForm(_Query):
    label: ReviewLabel
    note: str = Field(default="", max_length=MAX_NOTE)
    csrf: str = Field(default="", max_length=128)
