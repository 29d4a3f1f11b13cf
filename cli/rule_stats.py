"""`latentguard rules stats`: per-rule precision from reviews and hit rate over time, the
numbers of the review console's stats page (both computed by `server.rule_stats`)."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from rich.table import Table

from latentguard import wire
from latentguard.cli.client import Client
from latentguard.cli.common import (
    EXIT_OK,
    CliError,
    Subparsers,
    add_connection,
    call,
    client_for,
    console,
)
from latentguard.server.records import ReviewRecord
from latentguard.server.rule_stats import (
    StatsReport,
    TraceOutcome,
    duration_text,
    latest_label,
    parse_duration,
    percent,
    report_json,
    rule_stats,
)

SPARK = " ▁▂▃▄▅▆▇█"


def _reviews(trace: Any) -> list[ReviewRecord]:
    return [ReviewRecord.model_validate({"label": wire.LABEL.name(r.label), "reviewer": r.reviewer,
                                         "note": r.note, "at": wire.from_timestamp(r.at)})
            for r in trace.reviews]


def outcomes(client: Client, start: datetime, end: datetime,
             limit: int) -> tuple[list[TraceOutcome], bool]:
    """One outcome per stored trace of start..end over gRPC (at most `limit`, newest
    first) and whether the bound cut the period; reviewed traces are read whole (GetTrace)
    for their reviews, which listings leave out."""
    from latentguard.v1 import traces_pb2

    req = traces_pb2.ListTracesRequest(page_size=min(1000, limit))
    req.start_time.CopyFrom(wire.to_timestamp(start))
    req.end_time.CopyFrom(wire.to_timestamp(end))
    out: list[TraceOutcome] = []
    reviewed = wire.STATUS["reviewed"]
    while len(out) < limit:
        resp = call(client, client.traces.ListTraces, req)
        for t in resp.traces[:limit - len(out)]:
            label = None
            if t.status == reviewed:
                full = call(client, client.traces.GetTrace, traces_pb2.GetTraceRequest(id=t.id))
                label = latest_label(_reviews(full))
            hits: dict[str, int] = {}
            for h in t.hits:
                hits[h.rule] = hits.get(h.rule, 0) + 1
            out.append(TraceOutcome(trace_id=t.id, started_at=wire.from_timestamp(t.started_at),
                                    hits=hits, label=label))
        if not resp.next_page_token:
            return out, False
        req.page_token = resp.next_page_token
    return out, True


def _spark(report: StatsReport, rule_index: int) -> str:
    return "".join(" " if not b.traces else SPARK[round(8 * b.flagged / b.traces)]
                   for b in report.rules[rule_index].buckets)


def stats_table(report: StatsReport) -> Table:
    table = Table(title=f"rules over {report.traces} stored traces, {report.start:%Y-%m-%d %H:%M}"
                  f" to {report.end:%Y-%m-%d %H:%M} UTC (hit rate per "
                  f"{duration_text(report.bucket)})")
    for col in ("rule", "flagged traces", "hits", "true pos.", "false pos.", "escalated",
                "not reviewed", "precision [95% CI] of decided", "hit rate", "over time"):
        table.add_column(col)
    for i, r in enumerate(report.rules):
        interval = r.interval
        precision = "-" if interval is None else (
            f"{percent(r.precision)} [{percent(interval[0])}, {percent(interval[1])}] "
            f"of {r.decided}")
        table.add_row(r.rule, str(r.flagged), str(r.hits), str(r.true_positive),
                      str(r.false_positive), str(r.escalated), str(r.unreviewed), precision,
                      percent(r.hit_rate), _spark(report, i))
    return table


def cmd_rules_stats(args: argparse.Namespace) -> int:
    end = datetime.now(UTC)
    start = args.since if args.since is not None else end - timedelta(days=7)
    if start >= end:
        raise CliError("--since: must be in the past")
    client = client_for(args)
    try:
        found, truncated = outcomes(client, start, end, args.max_traces)
    finally:
        client.close()
    try:
        report = rule_stats(found, start, end, args.bucket, truncated=truncated)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    if args.json:
        print(json.dumps(report_json(report), indent=2))
        return EXIT_OK
    out = console()
    out.print(stats_table(report))
    if truncated:
        out.print(f"only the newest {args.max_traces} traces of the period were read "
                  "(--max-traces)")
    out.print("precision: true positives over decided reviews (true + false positives); a "
              "review counts for every rule that fired in its trace, the latest review wins")
    return EXIT_OK


def bucket(value: str) -> timedelta:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--bucket: {exc}") from None


def register(rules: Subparsers) -> None:
    """`rules stats`, under the `rules` command group."""
    from latentguard.cli.traces import since

    p = rules.add_parser("stats", help="per-rule precision from reviews and hit rate over time "
                         "(the console's stats page)")
    p.add_argument("--since", type=since, help="30m, 2h, 7d (default) or an ISO time")
    p.add_argument("--bucket", type=bucket, help="hit-rate bucket, like 1h or 1d (default: "
                   "at most 48 buckets)")
    p.add_argument("--max-traces", type=int, default=20_000,
                   help="most stored traces read, newest first (default 20000)")
    p.add_argument("--json", action="store_true")
    add_connection(p)
    p.set_defaults(func=cmd_rules_stats)
