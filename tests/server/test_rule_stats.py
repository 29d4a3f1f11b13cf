"""The per-rule stats (`server.rule_stats`): counts, precision, the latest review, buckets."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from latentguard.monitors.rules import RuleHit
from latentguard.server.records import ReviewRecord, TraceRecord
from latentguard.server.rule_stats import (
    TraceOutcome,
    choose_bucket,
    duration_text,
    latest_label,
    outcome_of,
    parse_duration,
    percent,
    report_json,
    rule_stats,
    wilson,
)

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def outcome(minutes: float, label: str | None = None, **hits: int) -> TraceOutcome:
    return TraceOutcome.model_validate({
        "trace_id": f"{int(minutes):025x}", "started_at": T0 + timedelta(minutes=minutes),
        "hits": {k.replace("_", "-"): v for k, v in hits.items()}, "label": label})


def test_precision_is_true_positives_over_decided_reviews() -> None:
    outcomes = [
        outcome(1, "true_positive", unsafe_code=2),
        outcome(2, "true_positive", unsafe_code=1, watch=1),
        outcome(3, "false_positive", unsafe_code=1),
        outcome(4, "escalate", unsafe_code=1),
        outcome(5, None, unsafe_code=3),
        outcome(6, None),  # clean: counts in the hit rate's denominator only
    ]
    report = rule_stats(outcomes, T0, T0 + timedelta(hours=1))
    assert report.traces == 6
    unsafe, watch = report.rules
    assert (unsafe.rule, unsafe.flagged, unsafe.hits) == ("unsafe-code", 5, 8)
    assert (unsafe.true_positive, unsafe.false_positive, unsafe.escalated) == (2, 1, 1)
    assert (unsafe.reviewed, unsafe.unreviewed, unsafe.decided) == (4, 1, 3)
    assert unsafe.precision == pytest.approx(2 / 3)
    low, high = unsafe.interval or (0, 0)
    assert 0.2 < low < 2 / 3 < high < 1
    assert unsafe.hit_rate == pytest.approx(5 / 6)
    # A review labels the trace, so it counts for every rule that fired in it.
    assert (watch.rule, watch.flagged, watch.true_positive, watch.precision) == ("watch", 1, 1, 1)


def test_no_decided_review_has_no_precision() -> None:
    report = rule_stats([outcome(1, "escalate", r=1), outcome(2, None, r=1)], T0,
                        T0 + timedelta(hours=1))
    (r,) = report.rules
    assert r.precision is None and r.interval is None and r.escalated == 1
    assert percent(r.precision) == "-" and percent(0.5) == "50%"


def test_the_latest_review_wins() -> None:
    first = ReviewRecord(label="true_positive", reviewer="a", at=T0)
    later = ReviewRecord(label="false_positive", reviewer="b", at=T0 + timedelta(minutes=1))
    assert latest_label([later, first]) == "false_positive"
    assert latest_label([]) is None
    same_time = ReviewRecord(label="escalate", reviewer="c", at=T0)
    assert latest_label([first, same_time]) == "escalate"  # then the one filed last
    hit = RuleHit(rule="r", severity="high", action={"type": "alert"}, position=3, score=2.0,
                  explanation="x")
    trace = TraceRecord(hits=[hit, hit], reviews=[first, later], started_at=T0)
    o = outcome_of(trace)
    assert o.hits == {"r": 2} and o.label == "false_positive"
    assert outcome_of(trace.summary().model_copy(update={"reviews": []}), [first]).label \
        == "true_positive"


def test_hit_rate_buckets() -> None:
    outcomes = [outcome(m, None, r=1) for m in (0, 10, 70)] + [outcome(75), outcome(130)]
    report = rule_stats(outcomes, T0, T0 + timedelta(hours=3), timedelta(hours=1))
    (r,) = report.rules
    assert [(b.start - T0, b.traces, b.flagged) for b in r.buckets] == [
        (timedelta(0), 2, 2), (timedelta(hours=1), 2, 1), (timedelta(hours=2), 1, 0),
        (timedelta(hours=3), 0, 0)]
    assert [b.rate for b in r.buckets] == [1.0, 0.5, 0.0, None]
    # Outside start..end is left out.
    assert rule_stats(outcomes, T0 + timedelta(hours=1), T0 + timedelta(hours=3)).traces == 3
    data = report_json(report)
    assert data["rules"][0]["flagged"] == 3 and data["bucket_s"] == 3600
    assert data["rules"][0]["buckets"][1] == {"start": "2026-03-01T13:00:00+00:00",
                                              "traces": 2, "flagged": 1}


def test_choices_and_refusals() -> None:
    assert choose_bucket(T0, T0 + timedelta(hours=1)) == timedelta(minutes=5)
    assert choose_bucket(T0, T0 + timedelta(days=1)) == timedelta(hours=1)
    assert choose_bucket(T0, T0 + timedelta(days=7)) == timedelta(hours=6)
    assert choose_bucket(T0, T0 + timedelta(days=30)) == timedelta(days=1)
    assert parse_duration("90m") == timedelta(minutes=90)
    widths = (timedelta(minutes=5), timedelta(hours=6), timedelta(days=7), timedelta(seconds=90))
    assert [duration_text(w) for w in widths] == ["5m", "6h", "7d", "90s"]
    with pytest.raises(ValueError, match="duration"):
        parse_duration("soon")
    with pytest.raises(ValueError, match="time zone"):
        rule_stats([], T0.replace(tzinfo=None), T0)
    with pytest.raises(ValueError, match="after start"):
        rule_stats([], T0, T0)
    with pytest.raises(ValueError, match="wider"):
        rule_stats([], T0, T0 + timedelta(days=30), timedelta(minutes=1))


def test_wilson() -> None:
    assert wilson(0, 10)[0] == 0.0 and wilson(10, 10)[1] == 1.0
    low, high = wilson(50, 100)
    assert low == pytest.approx(0.4038, abs=1e-3) and high == pytest.approx(0.5962, abs=1e-3)
    with pytest.raises(ValueError):
        wilson(0, 0)
