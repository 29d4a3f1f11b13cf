"""Terminal rendering of rules, traces and alerts (rich)."""

from __future__ import annotations

from datetime import UTC
from typing import Any

from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from latentguard import wire
from latentguard.v1 import rules_pb2, traces_pb2

SEVERITY_STYLE = {"info": "dim", "low": "cyan", "medium": "yellow", "high": "bold red",
                  "critical": "bold white on red", "": "dim"}


def _sev(value: int) -> Text:
    name = wire.SEVERITY.name(value)
    return Text(name or "-", style=SEVERITY_STYLE.get(name or "", ""))


def _time(ts: object) -> str:
    if not ts.seconds and not ts.nanos:  # type: ignore[attr-defined]
        return "-"
    return wire.from_timestamp(ts).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")  # type: ignore[arg-type]


def _name(table: wire.EnumTable[Any], value: int) -> str:
    return table.name(value) or "-"


def sae_text(sae: rules_pb2.SAEIdentity) -> str:
    """An SAE as people read it: ``gemma-3-270m/blocks.9.hook_resid_post (sha256 1ca6...)``."""
    label = "/".join(x for x in (sae.name, sae.hook) if x) or "SAE"
    return f"{label} (sha256 {sae.sha256})"


def _applied(r: rules_pb2.Rule) -> Text:
    if r.inactive_reason:
        return Text("NO (below)", style="bold red")
    return Text("yes" if r.enabled else "no (disabled)", style="" if r.enabled else "dim")


def inactive_rules(resp: rules_pb2.ListRulesResponse) -> list[Text]:
    """One line per stored rule this sidecar does not apply, with the reason."""
    return [Text.assemble((f"{r.name} is not applied: ", "bold red"), r.inactive_reason)
            for r in resp.rules if r.inactive_reason]


def rules_table(resp: rules_pb2.ListRulesResponse) -> Table:
    sae = sae_text(resp.sae) if resp.HasField("sae") else "none"
    table = Table(title=f"rules (store revision {resp.revision}; this sidecar's SAE: {sae})")
    for col in ("name", "version", "severity", "scope", "action", "written for", "applied",
                "description"):
        table.add_column(col)
    for r in resp.rules:
        table.add_row(r.name, str(r.version), _sev(r.severity), _name(wire.SCOPE, r.scope),
                      _name(wire.ACTION, r.action.type)
                      + (" at the end" if r.check == rules_pb2.CHECK_END else ""),
                      sae_text(r.sae) if r.HasField("sae") else "-", _applied(r),
                      r.description)
    return table


def policies_table(resp: rules_pb2.ListPoliciesResponse) -> Table:
    table = Table(title="policies")
    for col in ("name", "version", "mode", "on failure", "monitoring", "rules"):
        table.add_column(col)
    for p in resp.policies:
        table.add_row(p.name, str(p.version), _name(wire.MODE, p.mode),
                      _name(wire.FAILURE, p.on_failure), "on" if p.monitoring else "off",
                      ", ".join(p.rules))
    return table


def traces_table(traces: list[traces_pb2.Trace]) -> Table:
    table = Table(title=f"{len(traces)} traces")
    for col in ("id", "started", "model", "policy", "status", "severity", "rules hit",
                "finish"):
        table.add_column(col, no_wrap=col == "id")
    for t in traces:
        status = _name(wire.STATUS, t.status)
        table.add_row(t.id, _time(t.started_at), t.model, t.policy,
                      Text(status, style="red" if status == "flagged" else ""),
                      _sev(t.max_severity), ", ".join(t.rules_hit), t.finish_reason)
    return table


def show_trace(console: Console, t: traces_pb2.Trace) -> None:
    status = _name(wire.STATUS, t.status)
    head = Text()
    head.append(f"trace {t.id}\n", style="bold")
    head.append(f"request {t.request_tag}  model {t.model or '-'}  policy {t.policy or '-'}\n")
    head.append(f"started {_time(t.started_at)}  ended {_time(t.ended_at)}  "
                f"tokens {t.prompt_tokens} prompt + {t.completion_tokens} generated\n")
    head.append("status ")
    head.append(status, style="bold red" if status == "flagged" else "bold")
    head.append(f"  finish {t.finish_reason or '-'}")
    if t.blocked:
        head.append(f"  BLOCKED by {t.blocked_by}", style="bold red")
    if t.monitoring_gap:
        head.append("  (monitoring gap)", style="yellow")
    if t.tokens_dropped or t.hits_dropped:
        head.append(f"\ntruncated: {t.tokens_dropped} more tokens and {t.hits_dropped} more "
                    "hits were monitored, not kept", style="yellow")
    if t.otel_trace_id:
        head.append(f"\nOpenTelemetry trace {t.otel_trace_id} span {t.otel_span_id}", style="dim")
    console.print(Panel(head, expand=False))
    if t.prompt_text or t.completion_text:
        text = Text()
        text.append(t.prompt_text, style="dim")
        text.append(t.completion_text)
        console.print(Panel(text, title="text", expand=False))

    hit_positions = {h.position: h for h in t.hits}
    if t.hits:
        hits = Table(title="rule hits")
        for col in ("rule", "severity", "action", "token", "score", "explanation"):
            hits.add_column(col)
        for h in t.hits:
            hits.add_row(h.rule, _sev(h.severity), _name(wire.ACTION, h.action),
                         str(h.position), f"{h.score:.3g}", h.explanation)
        console.print(hits)

    if t.tokens:
        tokens = Table(title="tokens and their strongest features")
        for col in ("pos", "token", "", "top features"):
            tokens.add_column(col, no_wrap=col != "top features")
        for tok in t.tokens:
            shown = repr(tok.text)[1:-1] if tok.text else f"#{tok.token_id}"
            feats = Text()
            for i, f in enumerate(tok.top_features):
                if i:
                    feats.append("  ")
                feats.append(f"{f.feature}", style="bold")
                if f.label:
                    feats.append(f" {f.label}", style="italic")
                feats.append(f" {f.value:.2f}", style="dim")
            hit = hit_positions.get(tok.position)
            marker = Text(f"<- {hit.rule}", style="bold red") if hit else Text(
                "prompt" if tok.prompt else "", style="dim")
            tokens.add_row(str(tok.position), Text(shown, style="red" if hit else ""), marker,
                           feats)
        console.print(tokens)

    for r in t.reviews:
        console.print(f"review: {_name(wire.LABEL, r.label)} by {r.reviewer} at "
                      f"{_time(r.at)}" + (f": {r.note}" if r.note else ""))


def alert_line(a: traces_pb2.Alert) -> Text:
    text = Text(f"{a.id}  ")
    text.append_text(_sev(a.hit.severity))
    text.append(f"  {a.hit.rule} ({_name(wire.ACTION, a.hit.action)}) trace {a.trace_id} "
                f"request {a.request_tag}: {a.hit.explanation}")
    return text
