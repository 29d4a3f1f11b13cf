"""`latentguard traces list | show | review | alerts`."""

from __future__ import annotations

import argparse
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf import json_format

from latentguard import wire
from latentguard.cli import render
from latentguard.cli.common import (
    EXIT_OK,
    Subparsers,
    add_connection,
    call,
    client_for,
    console,
)

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")


def since(value: str) -> datetime:
    m = _DURATION.match(value)
    if m:
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[m.group(2)]
        return datetime.now(UTC) - timedelta(**{unit: float(m.group(1))})
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--since: {value!r} is neither a duration like 30m/2h/7d nor an ISO time") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def cmd_traces_list(args: argparse.Namespace) -> int:
    from latentguard.v1 import traces_pb2

    req = traces_pb2.ListTracesRequest(
        rule=args.rule or "", page_size=min(args.limit, 1000),
        min_severity=wire.SEVERITY.code(args.severity),
        status=wire.STATUS.code(args.status),
    )
    if args.since is not None:
        req.start_time.CopyFrom(wire.to_timestamp(args.since))
    client = client_for(args)
    traces: list[Any] = []
    while len(traces) < args.limit:
        resp = call(client, client.traces.ListTraces, req)
        traces += list(resp.traces)
        if not resp.next_page_token:
            break
        req.page_token = resp.next_page_token
    traces = traces[:args.limit]
    if args.json:
        print(json.dumps([json_format.MessageToDict(t) for t in traces], indent=2))
    else:
        console().print(render.traces_table(traces))
    return EXIT_OK


def cmd_traces_show(args: argparse.Namespace) -> int:
    from latentguard.v1 import traces_pb2

    client = client_for(args)
    trace = call(client, client.traces.GetTrace, traces_pb2.GetTraceRequest(id=args.id))
    if args.json:
        print(json_format.MessageToJson(trace))
    else:
        render.show_trace(console(), trace)
    return EXIT_OK


def cmd_traces_review(args: argparse.Namespace) -> int:
    from latentguard.v1 import traces_pb2

    client = client_for(args)
    trace = call(client, client.traces.ReviewTrace, traces_pb2.ReviewTraceRequest(
        id=args.id, label=LABELS[args.label], reviewer=args.reviewer or "", note=args.note or ""))
    print(f"trace {trace.id}: reviewed ({len(trace.reviews)} reviews)")
    return EXIT_OK


def cmd_traces_alerts(args: argparse.Namespace) -> int:
    from latentguard.v1 import traces_pb2

    client = client_for(args)
    req = traces_pb2.StreamAlertsRequest(
        min_severity=wire.SEVERITY.code(args.severity), rules=args.rule or [],
        consumer_group=args.group or "", after_id=args.after or "")
    out = console()
    stream = client.traces.StreamAlerts(req, metadata=client.metadata)
    try:
        for n, alert in enumerate(stream, start=1):
            if args.json:
                print(json_format.MessageToJson(alert, indent=None), flush=True)
            else:
                out.print(render.alert_line(alert))
            if alert.consumer_group:  # printed: the group may forget it
                call(client, client.traces.AckAlerts, traces_pb2.AckAlertsRequest(
                    consumer_group=alert.consumer_group, ids=[alert.id]))
            if args.count and n >= args.count:
                break
    except KeyboardInterrupt:
        pass
    finally:
        stream.cancel()
    return EXIT_OK


#: Review labels as typed on the command line: the schema names, and tp / fp for short.
LABELS = {**wire.LABEL, "tp": wire.LABEL["true_positive"], "fp": wire.LABEL["false_positive"]}


def register(sub: Subparsers) -> None:
    traces = sub.add_parser("traces", help="list, show and review traces; follow alerts"
                            ).add_subparsers(dest="traces_command", required=True)
    p = traces.add_parser("list")
    p.add_argument("--rule")
    p.add_argument("--status", choices=wire.STATUS.names)
    p.add_argument("--severity", choices=wire.SEVERITY.names, help="minimum severity")
    p.add_argument("--since", type=since, help="30m, 2h, 7d or an ISO time")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true")
    add_connection(p)
    p.set_defaults(func=cmd_traces_list)
    p = traces.add_parser("show", help="a trace's tokens with their top features and hits")
    p.add_argument("id")
    p.add_argument("--json", action="store_true")
    add_connection(p)
    p.set_defaults(func=cmd_traces_show)
    p = traces.add_parser("review")
    p.add_argument("id")
    p.add_argument("--label", required=True, choices=sorted(LABELS))
    p.add_argument("--note")
    p.add_argument("--reviewer", help="needed when the sidecar has no tokens; with tokens "
                   "the review is filed under the token's name")
    add_connection(p)
    p.set_defaults(func=cmd_traces_review)
    p = traces.add_parser("alerts", help="follow live alerts")
    p.add_argument("--severity", choices=wire.SEVERITY.names)
    p.add_argument("--rule", action="append")
    p.add_argument("--group", help="consumer group (share alerts with other followers)")
    p.add_argument("--after", help="replay alerts after this id ('0' = all kept)")
    p.add_argument("--count", type=int, default=0, help="stop after N alerts")
    p.add_argument("--json", action="store_true")
    add_connection(p)
    p.set_defaults(func=cmd_traces_alerts)
