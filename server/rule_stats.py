"""Per-rule precision from reviews, and hit rate over time: the one computation behind the
review console's stats page and `latentguard rules stats`.

Pure: the callers gather one `TraceOutcome` per stored trace (the console from the store, the
CLI over gRPC) and `rule_stats` counts them. A review labels a whole trace, so it counts for
every rule that fired in it; the latest review of a trace wins. Precision is true positives over
the decided reviews (true + false positives); escalations are counted apart, undecided.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict

from latentguard.server.records import ReviewLabel, ReviewRecord, TraceRecord

__all__ = [
    "BUCKETS",
    "Bucket",
    "RuleStats",
    "StatsReport",
    "TraceOutcome",
    "choose_bucket",
    "duration_text",
    "latest_label",
    "outcome_of",
    "parse_duration",
    "percent",
    "report_json",
    "rule_stats",
    "wilson",
]

#: Bucket widths offered, narrowest first; `choose_bucket` picks the first giving <= 48.
BUCKETS: tuple[timedelta, ...] = (
    timedelta(minutes=1), timedelta(minutes=5), timedelta(minutes=15), timedelta(hours=1),
    timedelta(hours=6), timedelta(days=1), timedelta(days=7),
)
MAX_BUCKETS = 48
_DURATION = re.compile(r"^(\d{1,5})([mhd])$")


class TraceOutcome(BaseModel):
    """What the stats read of one stored trace."""

    model_config = ConfigDict(frozen=True)
    trace_id: str
    started_at: datetime
    hits: dict[str, int] = {}
    """Rule -> how many times it fired in the trace (the hits the trace kept)."""
    label: ReviewLabel | None = None
    """The latest review's label; None when the trace has no review."""


class Bucket(BaseModel):
    """One time slot of a rule's hit rate."""

    model_config = ConfigDict(frozen=True)
    start: datetime
    traces: int
    """Stored traces that started in the slot."""
    flagged: int
    """Of those, traces where the rule fired."""

    @property
    def rate(self) -> float | None:
        return self.flagged / self.traces if self.traces else None


class RuleStats(BaseModel):
    model_config = ConfigDict(frozen=True)
    rule: str
    flagged: int
    """Traces where the rule fired."""
    hits: int
    """Hits of the rule in them (a rule may fire on several tokens of one trace)."""
    true_positive: int = 0
    false_positive: int = 0
    escalated: int = 0
    buckets: list[Bucket] = []

    @property
    def reviewed(self) -> int:
        return self.true_positive + self.false_positive + self.escalated

    @property
    def unreviewed(self) -> int:
        return self.flagged - self.reviewed

    @property
    def decided(self) -> int:
        return self.true_positive + self.false_positive

    @property
    def precision(self) -> float | None:
        """True positives over decided reviews; None before any."""
        return self.true_positive / self.decided if self.decided else None

    @property
    def interval(self) -> tuple[float, float] | None:
        """95% Wilson interval of the precision; None before any decided review."""
        return wilson(self.true_positive, self.decided) if self.decided else None

    @property
    def hit_rate(self) -> float | None:
        traces = sum(b.traces for b in self.buckets)
        return self.flagged / traces if traces else None


class StatsReport(BaseModel):
    model_config = ConfigDict(frozen=True)
    start: datetime
    end: datetime
    bucket: timedelta
    traces: int
    """Stored traces read (all, flagged or not)."""
    rules: list[RuleStats]
    truncated: bool = False
    """More traces were stored in the range than the caller read (its bound)."""


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n (95% for z = 1.96)."""
    if n <= 0:
        raise ValueError("wilson: n must be positive")
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def latest_label(reviews: Sequence[ReviewRecord]) -> ReviewLabel | None:
    """The label of the latest review (by time, then order filed), or None without one."""
    if not reviews:
        return None
    return max(enumerate(reviews), key=lambda ir: (ir[1].at, ir[0]))[1].label


def outcome_of(trace: TraceRecord, reviews: Sequence[ReviewRecord] | None = None
               ) -> TraceOutcome:
    """A stored trace's outcome; ``reviews`` when the record came without them (listings)."""
    hits: dict[str, int] = {}
    for h in trace.hits:
        hits[h.rule] = hits.get(h.rule, 0) + 1
    return TraceOutcome(trace_id=trace.id, started_at=trace.started_at, hits=hits,
                        label=latest_label(trace.reviews if reviews is None else reviews))


def parse_duration(value: str) -> timedelta:
    """``30m``, ``2h`` or ``7d``; ValueError naming the value otherwise."""
    m = _DURATION.match(value)
    if m is None:
        raise ValueError(f"{value!r} is not a duration like 30m, 2h or 7d")
    unit = {"m": "minutes", "h": "hours", "d": "days"}[m.group(2)]
    return timedelta(**{unit: int(m.group(1))})


def duration_text(width: timedelta) -> str:
    """``5m``, ``1h``, ``1d``: a bucket width as `parse_duration` reads it."""
    seconds = int(width.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def choose_bucket(start: datetime, end: datetime) -> timedelta:
    """The narrowest of `BUCKETS` that splits start..end into at most 48 slots."""
    span = end - start
    for width in BUCKETS:
        if span / width <= MAX_BUCKETS:
            return width
    return BUCKETS[-1]


def _slot(at: datetime, width: timedelta) -> int:
    return math.floor(at.timestamp() / width.total_seconds())


def rule_stats(outcomes: Iterable[TraceOutcome], start: datetime, end: datetime,
               bucket: timedelta | None = None, truncated: bool = False) -> StatsReport:
    """Per rule that fired in a trace of start..end: flagged traces, hits, review counts and
    precision, and its hit rate per time bucket (traces where it fired over stored traces).
    Traces outside start..end are left out. Rules ordered by flagged traces, then name."""
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("rule_stats: start and end must carry a time zone")
    if end <= start:
        raise ValueError("rule_stats: end must be after start")
    width = bucket or choose_bucket(start, end)
    first, last = _slot(start, width), _slot(end, width)
    if last - first + 1 > 10 * MAX_BUCKETS:
        raise ValueError(f"rule_stats: {last - first + 1} buckets of {width}; choose a wider "
                         "bucket")
    per_slot = [0] * (last - first + 1)
    flagged: dict[str, list[int]] = {}
    hits: dict[str, int] = {}
    labels: dict[str, dict[str, int]] = {}
    traces = 0
    for o in outcomes:
        if not start <= o.started_at <= end:
            continue
        traces += 1
        slot = _slot(o.started_at, width) - first
        per_slot[slot] += 1
        for rule, n in o.hits.items():
            if n <= 0:
                continue
            flagged.setdefault(rule, [0] * len(per_slot))[slot] += 1
            hits[rule] = hits.get(rule, 0) + n
            if o.label is not None:
                counts = labels.setdefault(rule, {})
                counts[o.label] = counts.get(o.label, 0) + 1
    starts = [datetime.fromtimestamp((first + i) * width.total_seconds(), UTC)
              for i in range(len(per_slot))]
    rules = []
    for rule, slots in flagged.items():
        counts = labels.get(rule, {})
        rules.append(RuleStats(
            rule=rule, flagged=sum(slots), hits=hits[rule],
            true_positive=counts.get("true_positive", 0),
            false_positive=counts.get("false_positive", 0),
            escalated=counts.get("escalate", 0),
            buckets=[Bucket(start=s, traces=t, flagged=f)
                     for s, t, f in zip(starts, per_slot, slots, strict=True)]))
    rules.sort(key=lambda r: (-r.flagged, r.rule))
    return StatsReport(start=start, end=end, bucket=width, traces=traces, rules=rules,
                       truncated=truncated)


def percent(value: float | None) -> str:
    """A rate as both the console and the CLI print it: ``50%``, or ``-`` for none."""
    return "-" if value is None else f"{100 * value:.0f}%"


def report_json(report: StatsReport) -> dict[str, Any]:
    """The report as JSON data (`rules stats --json`), with the derived numbers spelled out."""
    return {
        "start": report.start.isoformat(), "end": report.end.isoformat(),
        "bucket_s": report.bucket.total_seconds(), "traces": report.traces,
        "truncated": report.truncated,
        "rules": [{
            "rule": r.rule, "flagged": r.flagged, "hits": r.hits,
            "true_positive": r.true_positive, "false_positive": r.false_positive,
            "escalated": r.escalated, "unreviewed": r.unreviewed, "precision": r.precision,
            "interval": list(r.interval) if r.interval is not None else None,
            "hit_rate": r.hit_rate,
            "buckets": [{"start": b.start.isoformat(), "traces": b.traces,
                         "flagged": b.flagged} for b in r.buckets],
        } for r in report.rules],
    }
