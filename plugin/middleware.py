"""Blocks an OpenAI client can see: `finish_reason: "content_filter"` and the rule that fired.

An ASGI middleware for vLLM's OpenAI server, added with its own option (`--middleware
latentguard.plugin.middleware.ContentFilterMiddleware`; the `latentguard vllm` launcher adds it).
On `/v1/completions` and `/v1/chat/completions` it adds a notice key to the request's `vllm_xargs`;
the worker files a notice under that key when it blocks the request (see `_notices`). In the
response (one JSON body, or the SSE chunks of `stream: true`), each choice that ended because of
a block gets `finish_reason: "content_filter"` and a `latentguard` field:

    {"index": 0, "text": "...", "finish_reason": "content_filter",
     "latentguard": {"blocked_by": "unsafe-code", "reason": "...", "request_tag": "..."}}

Extra fields are allowed by the OpenAI API, and `content_filter` is one of its finish reasons.
Other paths, responses other than 200, and requests nothing blocked pass through unchanged.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from typing import TYPE_CHECKING, Any

from latentguard.plugin._notices import NOTICE_ARG, Notice, NoticeInbox, notices_dir

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["ContentFilterMiddleware", "choice_index"]

log = logging.getLogger(__name__)

COMPLETIONS, CHAT = "/v1/completions", "/v1/chat/completions"
CONTENT_FILTER = "content_filter"
#: The finish reasons a block shows up as: EOS forced (`stop`); `length` with `ignore_eos`.
_BLOCKED_AS = ("stop", "length")
_FINISHED = re.compile(rb'"finish_reason"\s*:\s*"(?:stop|length)"')
# vLLM's internal ids (0.32): `{n-index}_` for a child of n > 1, the response id, then
# `-{prompt index}` (completions) or `_{input index}` (chat, several inputs), then `-` and 8
# random hex digits (absent with VLLM_DISABLE_REQUEST_ID_RANDOMIZATION).
_CHILD = re.compile(r"(\d+)_")
_REST = {COMPLETIONS: re.compile(r"-(\d+)(?:-[0-9a-f]{8})?"),
         CHAT: re.compile(r"(?:_(\d+))?(?:-[0-9a-f]{8})?")}


def choice_index(request_id: str, response_id: str, n: int, path: str) -> int | None:
    """The index of the choice that vLLM request `request_id` answers in response
    `response_id` (None when the id does not have the expected form)."""
    sample = 0
    child = _CHILD.match(request_id)
    if child and request_id[child.end():].startswith(response_id):
        sample, request_id = int(child.group(1)), request_id[child.end():]
    if not request_id.startswith(response_id) or path not in _REST:
        return None
    rest = _REST[path].fullmatch(request_id[len(response_id):])
    if rest is None:
        return None
    return int(rest.group(1) or 0) * n + sample


def _keyed(body: bytes, key: str) -> tuple[bytes, dict[str, Any]] | None:
    """The request body with the notice key in its `vllm_xargs`, and the parsed request; None
    when it is not a JSON object vLLM would accept (vLLM answers it)."""
    try:
        request = json.loads(body)
    except ValueError:
        return None
    if not isinstance(request, dict):
        return None
    xargs = request.get("vllm_xargs")
    if xargs is None:
        xargs = request["vllm_xargs"] = {}
    elif not isinstance(xargs, dict):
        return None
    xargs[NOTICE_ARG] = key
    return json.dumps(request, ensure_ascii=False).encode(), request


def _n(request: dict[str, Any]) -> int:
    n = request.get("n")
    return n if isinstance(n, int) and n > 0 else 1


class _Response:
    """Rewrites one response's choices from the notices filed under its key."""

    def __init__(self, inbox: NoticeInbox, key: str, path: str, n: int) -> None:
        self.inbox, self.key, self.path, self.n = inbox, key, path, n

    def rewrite(self, payload: dict[str, Any], notices: list[Notice]) -> bool:
        """Marks the blocked choices of one response object or chunk; True if any changed."""
        changed = False
        response_id = str(payload.get("id", ""))
        choices = payload.get("choices")
        for choice in choices if isinstance(choices, list) else ():
            if not isinstance(choice, dict) or choice.get("finish_reason") not in _BLOCKED_AS:
                continue
            notice = self._match(notices, response_id, choice.get("index", 0))
            if notice is not None:
                choice["finish_reason"] = CONTENT_FILTER
                choice["latentguard"] = {"blocked_by": notice.rule, "reason": notice.reason,
                                         "request_tag": notice.tag}
                changed = True
        return changed

    def _match(self, notices: list[Notice], response_id: str, index: object) -> Notice | None:
        for notice in notices:
            if choice_index(notice.request_id, response_id, self.n, self.path) == index:
                return notice
        return None

    def body(self, body: bytes) -> bytes:
        """A whole JSON response."""
        notices = self.inbox.get(self.key)
        try:
            payload = json.loads(body)
        except ValueError:
            return body
        if not isinstance(payload, dict) or not self.rewrite(payload, notices):
            return body
        return json.dumps(payload, ensure_ascii=False).encode()

    def event(self, event: bytes) -> bytes:
        """One SSE event (`data: {...}`); only those that finish a choice are read."""
        if not _FINISHED.search(event) or not event.startswith(b"data:"):
            return event
        notices = self.inbox.get(self.key)
        if not notices:
            return event
        try:
            payload = json.loads(event[5:])
        except ValueError:
            return event
        if not isinstance(payload, dict) or not self.rewrite(payload, notices):
            return event
        return b"data: " + json.dumps(payload, ensure_ascii=False,
                                      separators=(",", ":")).encode()


class ContentFilterMiddleware:
    """vLLM's `--middleware` (a class: vLLM calls `app.add_middleware(ContentFilterMiddleware)`)."""

    def __init__(self, app: ASGIApp, inbox: NoticeInbox | None = None) -> None:
        self.app = app
        self.inbox = inbox if inbox is not None else NoticeInbox.shared(notices_dir())
        log.info("latentguard: blocked requests end with finish_reason %r (notices at %s)",
                 CONTENT_FILTER, self.inbox.path)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" \
                or scope.get("path") not in (COMPLETIONS, CHAT):
            await self.app(scope, receive, send)
            return
        messages: list[Message] = []
        body = b""
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        key = uuid.uuid4().hex
        keyed = _keyed(body, key) if messages[-1]["type"] == "http.request" else None
        if keyed is None:
            await self.app(scope, _replay(messages, receive), send)
            return
        new_body, request = keyed
        headers = [(k, v) for k, v in scope.get("headers", []) if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(new_body)).encode()))
        scope = {**scope, "headers": headers}
        response = _Response(self.inbox, key, scope["path"], _n(request))
        try:
            await self.app(scope, _replay([{"type": "http.request", "body": new_body,
                                            "more_body": False}], receive),
                           _Sender(response, send))
        finally:
            self.inbox.discard(key)


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A receive that gives `messages` first, then the client's own (its disconnect)."""
    queue = list(messages)

    async def replay() -> Message:
        return queue.pop(0) if queue else await receive()

    return replay


class _Sender:
    """The send of one keyed request: passes the response on, rewritten where blocked."""

    def __init__(self, response: _Response, send: Send) -> None:
        self.response, self.send = response, send
        self.mode = "pass"
        self.start: Message | None = None
        self.buffer = b""

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            await self._start(message)
        elif message["type"] == "http.response.body" and self.mode != "pass":
            await self._body(message)
        else:
            await self.send(message)

    async def _start(self, message: Message) -> None:
        headers = {k.lower(): v for k, v in message.get("headers", [])}
        kind = headers.get(b"content-type", b"")
        if message.get("status") != 200:
            self.mode = "pass"
        elif kind.startswith(b"text/event-stream"):
            self.mode = "stream"
        elif kind.startswith(b"application/json") and self.response.inbox.get(self.response.key):
            # The whole generation ran before a JSON response starts: its notices are all in.
            self.mode, self.start = "json", message
            return
        await self.send(message)

    async def _body(self, message: Message) -> None:
        more = message.get("more_body", False)
        self.buffer += message.get("body", b"")
        if self.mode == "json":
            if more:
                return
            body = self.response.body(self.buffer)
            assert self.start is not None
            headers = [(k, v) for k, v in self.start.get("headers", [])
                       if k.lower() != b"content-length"]
            headers.append((b"content-length", str(len(body)).encode()))
            await self.send({**self.start, "headers": headers})
            await self.send({"type": "http.response.body", "body": body, "more_body": False})
            return
        *events, self.buffer = self.buffer.split(b"\n\n")
        if not more and self.buffer:
            events.append(self.buffer)
            self.buffer = b""
        out = b"".join(self.response.event(e) + b"\n\n" for e in events if e)
        if out or not more:
            await self.send({"type": "http.response.body", "body": out, "more_body": more})
