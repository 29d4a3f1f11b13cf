"""The review console's web app (Starlette): server-rendered pages over the sidecar's store,
guarded by its tokens and roles (`_auth`), with live alerts over server-sent events.

Pages: flagged traces (filters, paging), one trace (shaded tokens, hits, plot, review), stats
(`server.rule_stats`), live alerts, features. `ConsoleServer` (`server.py`) serves it from the
sidecar's own event loop.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from pydantic import ValidationError
from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from latentguard.monitors.catalog import FeatureCatalog
from latentguard.monitors.errors import NotFoundError
from latentguard.monitors.rules import severity_rank
from latentguard.server.config import UISettings
from latentguard.server.console import _queries
from latentguard.server.console._auth import COOKIE, Caller, ConsoleAuth, Refused
from latentguard.server.console._forms import (
    PERIODS,
    AlertQuery,
    ListQuery,
    ReviewForm,
    StatsQuery,
    parse_period,
)
from latentguard.server.console._trace_view import build_view
from latentguard.server.errors import NotFound
from latentguard.server.records import AlertRecord, ReviewRecord, utcnow
from latentguard.server.rule_stats import duration_text, percent, rule_stats
from latentguard.server.store import Store

__all__ = ["ConsoleDeps", "create_app"]

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
MAX_LIVE = 64
"""Most live-alert connections at once (each holds a blocking read on the store)."""
_TRACE_ID = re.compile(r"^[0-9a-f]{25}$")
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


@dataclass
class ConsoleDeps:
    """What the pages read: the store, the tokens, the SAE's feature catalog."""

    store: Store
    auth: ConsoleAuth
    catalog: Callable[[], FeatureCatalog | None]
    settings: UISettings
    secure_cookies: bool = False
    """Mark the session cookie Secure (the console serves HTTPS)."""


Handler = Callable[[Request, Caller], Awaitable[Response]]


class _SecurityHeaders(BaseHTTPMiddleware):
    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        response = await call_next(request)
        for key, value in _HEADERS.items():
            response.headers.setdefault(key, value)
        if not request.url.path.startswith("/static/"):
            response.headers.setdefault("Cache-Control", "no-store")
        return response


def _fmt_time(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def create_app(deps: ConsoleDeps) -> Starlette:
    templates = Jinja2Templates(directory=HERE / "templates")
    env = templates.env
    env.filters["time"] = _fmt_time
    env.filters["pct"] = percent
    env.filters["duration"] = duration_text
    env.filters["oneline"] = lambda text: str(text).replace("\n", "↵")
    env.globals["severity_rank"] = severity_rank
    live = {"open": 0}

    def caller_of(request: Request) -> Caller | None:
        return deps.auth.identify(request.headers.get("authorization"),
                                  request.cookies.get(COOKIE))

    def page(request: Request, name: str, caller: Caller | None, status: int = 200,
             **context: Any) -> Response:
        context |= {"caller": caller, "csrf": deps.auth.csrf(caller) if caller else "",
                    "may_review": caller is not None and caller.may("review")}
        return templates.TemplateResponse(request, name, context, status_code=status)

    def refused(request: Request, exc: Refused) -> Response:
        if request.method != "GET" or request.url.path.endswith("/events"):
            return PlainTextResponse(str(exc), status_code=exc.status,
                                     headers={"WWW-Authenticate": "Bearer"}
                                     if exc.status == 401 else None)
        if exc.status == 401:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            response = page(request, "login.html", None, 401, next=target, error="")
            response.headers["WWW-Authenticate"] = "Bearer"
            return response
        return page(request, "error.html", caller_of(request), exc.status,
                    title="Not allowed", message=str(exc))

    def guarded(action: str, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                caller = deps.auth.require(caller_of(request), action)
            except Refused as exc:
                return refused(request, exc)
            try:
                return await handler(request, caller)
            except (ValidationError, ValueError) as exc:
                message = _problem(exc)
                return page(request, "error.html", caller, 400, title="Bad request",
                            message=message)
            except (NotFound, NotFoundError) as exc:
                return page(request, "error.html", caller, 404, title="Not found",
                            message=str(exc))
        return endpoint

    # ---- login ------------------------------------------------------------------------------

    async def login_form(request: Request) -> Response:
        return page(request, "login.html", caller_of(request), next=_next(request), error="")

    async def login(request: Request) -> Response:
        form = await request.form()
        token, target = str(form.get("token", "")), _safe_next(str(form.get("next", "")))
        done = deps.auth.login(token) if 0 < len(token) <= 4096 else None
        if done is None:
            return page(request, "login.html", None, 401, next=target,
                        error="unknown token")
        caller, sid = done
        log.info("console login: %s (%s)", caller.name, caller.role)
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(COOKIE, sid, max_age=int(deps.settings.session_hours * 3600),
                            httponly=True, samesite="strict", secure=deps.secure_cookies,
                            path="/")
        return response

    async def logout(request: Request) -> Response:
        caller = caller_of(request)
        form = await request.form()
        if caller is not None and deps.auth.check_csrf(caller, str(form.get("csrf", ""))):
            deps.auth.logout(caller)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    # ---- traces -----------------------------------------------------------------------------

    async def traces(request: Request, caller: Caller) -> Response:
        query = ListQuery.model_validate(dict(request.query_params))
        flt = query.trace_filter(utcnow())
        listed, token = await deps.store.traces.list(flt)
        rules = sorted(await _queries.stored_rules(deps.store))
        args = query.model_dump(mode="json", exclude_defaults=True, exclude={"page"})
        return page(request, "traces.html", caller, traces=listed, next_page=token,
                    query=query, rules=rules, periods=list(PERIODS), args=args)

    async def trace(request: Request, caller: Caller) -> Response:
        trace_id = _trace_id(request)
        record = await deps.store.traces.get(trace_id)
        hit = int(request.query_params.get("hit", "0") or 0)
        view = build_view(record, await _queries.stored_rules(deps.store), hit)
        catalog = deps.catalog()
        labels = catalog.labels() if catalog is not None else {}
        shown = {f for feats in view.features.values() for f, _ in feats}
        data = {"features": {str(p): feats for p, feats in view.features.items()},
                "labels": {str(f): labels[f] for f in shown if f in labels},
                "signal": view.signal_name,
                "values": {str(c.position): c.value for c in view.cells if c.value is not None}}
        return page(request, "trace.html", caller, view=view, t=record, labels=labels,
                    data=_script_json(data), reviewed=request.query_params.get("reviewed"))

    async def review(request: Request, caller: Caller) -> Response:
        trace_id = _trace_id(request)
        form = ReviewForm.model_validate(dict(await request.form()))
        if not deps.auth.check_csrf(caller, form.csrf):
            return page(request, "error.html", caller, 403, title="Not allowed",
                        message="the form is stale or from another site (CSRF token); "
                                "reload the trace and review again")
        record = ReviewRecord(label=form.label, reviewer=caller.name, note=form.note)
        await deps.store.traces.review(trace_id, record)
        log.info("console review of %s by %s: %s", trace_id, caller.name, form.label)
        return RedirectResponse(f"/traces/{trace_id}?reviewed={form.label}#review",
                                status_code=303)

    # ---- stats ------------------------------------------------------------------------------

    async def stats(request: Request, caller: Caller) -> Response:
        query = StatsQuery.model_validate(dict(request.query_params))
        end = utcnow()
        back = parse_period(query.period)
        assert back is not None  # StatsQuery refuses "all"
        start = end - back
        limit = deps.settings.stats_max_traces
        outcomes, truncated = await _queries.outcomes(deps.store, start, end, limit)
        bucket = parse_period(query.bucket) if query.bucket else None
        report = rule_stats(outcomes, start, end, bucket, truncated=truncated)
        return page(request, "stats.html", caller, report=report, query=query,
                    periods=[p for p in PERIODS if p != "all"], limit=limit,
                    bars=_bars)

    # ---- alerts -----------------------------------------------------------------------------

    async def alerts(request: Request, caller: Caller) -> Response:
        query = AlertQuery.model_validate(dict(request.query_params))
        args = {k: v for k, v in query.model_dump().items() if v}
        return page(request, "alerts.html", caller, query=query,
                    source="/alerts/events" + (f"?{urlencode(args)}" if args else ""),
                    rules=sorted(await _queries.stored_rules(deps.store)))

    async def alert_events(request: Request, caller: Caller) -> Response:
        query = AlertQuery.model_validate(dict(request.query_params))
        if live["open"] >= MAX_LIVE:
            return PlainTextResponse(f"at most {MAX_LIVE} live alert pages at once",
                                     status_code=503, headers={"Retry-After": "10"})
        after = request.headers.get("last-event-id", "")
        min_rank = severity_rank(query.severity or "info")

        def wanted(a: AlertRecord) -> bool:
            return (not query.rule or a.hit.rule == query.rule) \
                and severity_rank(a.hit.severity) >= min_rank

        async def events() -> AsyncIterator[dict[str, str]]:
            live["open"] += 1
            follow = deps.store.alerts.follow(after if _stream_id(after) else "")
            try:
                async for alert in follow:
                    if wanted(alert):
                        yield {"event": "alert", "id": alert.id, "data": _alert_json(alert)}
            finally:
                live["open"] -= 1
                await follow.aclose()  # type: ignore[attr-defined]  # an async generator

        return EventSourceResponse(events(), ping=15, send_timeout=30)

    # ---- features ---------------------------------------------------------------------------

    async def features(request: Request, caller: Caller) -> Response:
        q = request.query_params.get("q", "").strip()[:200]
        catalog = deps.catalog()
        if q.isdigit():
            return RedirectResponse(f"/features/{int(q)}", status_code=303)
        found = catalog.search(q, 50) if catalog is not None and q else (
            catalog.list(0, 100) if catalog is not None else [])
        return page(request, "features.html", caller, q=q, found=found,
                    has_catalog=catalog is not None)

    async def feature(request: Request, caller: Caller) -> Response:
        index = int(request.path_params["index"])
        catalog = deps.catalog()
        entry = None
        if catalog is not None:
            if catalog.d_sae is not None and index >= catalog.d_sae:
                raise NotFound(f"feature {index}: the SAE has {catalog.d_sae} features")
            entry = catalog.entries.get(index)
        scan = deps.settings.feature_scan_traces
        tokens, read = await _queries.feature_tokens(deps.store, index, scan)
        return page(request, "feature.html", caller, index=index, entry=entry, tokens=tokens,
                    read=read, scan=scan)

    async def root(request: Request) -> Response:
        return RedirectResponse("/traces", status_code=303)

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok")

    routes = [
        Route("/", root),
        Route("/healthz", healthz),
        Route("/login", login_form, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/traces", guarded("traces", traces)),
        Route("/traces/{trace_id:str}", guarded("trace", trace)),
        Route("/traces/{trace_id:str}/review", guarded("review", review), methods=["POST"]),
        Route("/stats", guarded("stats", stats)),
        Route("/alerts", guarded("alerts", alerts)),
        Route("/alerts/events", guarded("alerts", alert_events)),
        Route("/features", guarded("features", features)),
        Route("/features/{index:int}", guarded("features", feature)),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    return Starlette(routes=routes, middleware=[Middleware(_SecurityHeaders)])


def _script_json(value: object) -> str:
    """JSON safe inside a <script> element (no `<`, `>` or `&` to end it early)."""
    return (json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e")
            .replace("&", "\\u0026"))


def _trace_id(request: Request) -> str:
    trace_id = str(request.path_params["trace_id"])
    if not _TRACE_ID.match(trace_id):
        raise NotFound(f"{trace_id[:40]!r} is not a trace id (25 hex digits)")
    return trace_id


def _problem(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                         for e in exc.errors())
    return str(exc)


def _next(request: Request) -> str:
    return _safe_next(request.query_params.get("next", ""))


def _safe_next(target: str) -> str:
    """A local path to go back to after login; anything else (another site) is /traces."""
    if target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/traces"


def _stream_id(value: str) -> bool:
    head, _, tail = value.partition("-")
    return head.isdigit() and len(head) < 20 and (not tail or (tail.isdigit() and len(tail) < 20))


def _alert_json(a: AlertRecord) -> str:
    h = a.hit
    return json.dumps({
        "id": a.id, "trace_id": a.trace_id, "rule": h.rule, "severity": h.severity,
        "action": h.action.type, "position": h.position, "score": round(h.score, 4),
        "explanation": h.explanation, "policy": a.policy, "model": a.model,
        "request_tag": a.request_tag, "at": _fmt_time(h.at)})


def _bars(buckets: list[Any], width: float = 240, height: float = 28) -> list[dict[str, float]]:
    """SVG bars of a rule's hit rate per bucket (height: the rate; empty slots left out)."""
    if not buckets:
        return []
    w = width / len(buckets)
    out = []
    for i, b in enumerate(buckets):
        if b.traces:
            h = max(1.0, height * b.flagged / b.traces) if b.flagged else 0.0
            out.append({"x": i * w, "y": height - h, "w": max(1.0, w - 1), "h": h,
                        "rate": b.flagged / b.traces, "flagged": b.flagged,
                        "traces": b.traces, "start": _fmt_time(b.start)})
    return out

