"""The content-filter middleware and its notice channel, without vLLM: a fake OpenAI app that
files a block notice the way the worker does, through real unix sockets."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from latentguard.plugin._notices import NOTICE_ARG, Notice, NoticeInbox, NoticeSender
from latentguard.plugin.middleware import CHAT, COMPLETIONS, ContentFilterMiddleware, choice_index


@pytest.fixture
def folder() -> Iterator[Path]:
    # Short: a unix socket path holds at most 107 bytes, and pytest's tmp_path can be longer.
    path = Path(tempfile.mkdtemp(prefix="lg-"))
    yield path / "notices"
    shutil.rmtree(path)


@pytest.fixture
def inbox(folder: Path) -> Iterator[NoticeInbox]:
    box = NoticeInbox(folder)
    yield box
    box.close()


def test_choice_index_reads_vllms_request_ids() -> None:
    r = "cmpl-3f2a"
    assert choice_index(f"{r}-0-1a2b3c4d", r, 1, COMPLETIONS) == 0
    assert choice_index(f"{r}-2-1a2b3c4d", r, 1, COMPLETIONS) == 2  # third prompt
    assert choice_index(f"1_{r}-2-1a2b3c4d", r, 3, COMPLETIONS) == 7  # n=3: 2 * 3 + 1
    assert choice_index(f"{r}-1", r, 1, COMPLETIONS) == 1  # no random suffix
    c = "chatcmpl-77"
    assert choice_index(f"{c}-12345678", c, 1, CHAT) == 0  # an all-digit suffix is no index
    assert choice_index(f"1_{c}-abcdef01", c, 2, CHAT) == 1
    assert choice_index(f"{c}_1-abcdef01", c, 1, CHAT) == 1
    assert choice_index(f"{c}-abcdef01", "chatcmpl-other", 1, CHAT) is None
    assert choice_index(f"{r}-x-1a2b3c4d", r, 1, COMPLETIONS) is None


def test_a_notice_sent_is_there_at_once(inbox: NoticeInbox, folder: Path) -> None:
    sender = NoticeSender(folder)
    notices = [Notice(key=f"k{i}", request_id=f"cmpl-a-{i}", rule="always", reason="x" * 5000,
                      tag=f"t{i}") for i in range(300)]
    for n in notices:  # far more than a datagram queue holds, before anyone reads
        sender.send(n)
    # No wait: sent means in the socket's buffer, and get() reads what is there.
    got = inbox.get("k7")
    assert [(n.request_id, n.rule, n.tag) for n in got] == [("cmpl-a-7", "always", "t7")]
    assert got[0].reason == "x" * 1000  # explanations are cut
    assert all(inbox.get(f"k{i}") for i in range(300))
    inbox.discard("k7")
    assert inbox.get("k7") == []
    sender.close()


def test_notices_beyond_the_socket_buffer_follow_the_next_one(inbox: NoticeInbox,
                                                             folder: Path) -> None:
    sender = NoticeSender(folder)
    n = 0
    while not sender._pending or n % 100:  # more than the kernel holds: the rest waits here
        sender.send(Notice(f"k{n}", f"r{n}", "always", "y" * 1000, ""))
        n += 1
    assert n > 500  # the larger buffer the sender asks for
    assert inbox.get("k0") and not inbox.get(f"k{n - 1}")
    sender.send(Notice("last", "r", "always", "", ""))  # room again: everything goes
    assert all(inbox.get(f"k{i}") for i in range(n)) and inbox.get("last")
    sender.close()


def test_senders_skip_dead_sockets_and_new_inboxes_clear_them(folder: Path) -> None:
    folder.mkdir(parents=True)
    dead = folder / "api-999999999.sock"  # no such pid
    dead.touch()
    NoticeSender(folder).send(Notice("k", "r", "rule", "why", "tag"))  # refused, not raised
    box = NoticeInbox(folder)
    try:
        assert not dead.exists() and box.path.name == f"api-{os.getpid()}.sock"
    finally:
        box.close()
    assert not box.path.exists()


def fake_openai(folder: Path, blocked: dict[int, str], n_choices: int = 1) -> Any:
    """An ASGI app answering like vLLM's OpenAI server; the choices in `blocked` (index ->
    rule) end with EOS after the worker filed a notice for them, under the request's key."""
    sender = NoticeSender(folder)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        request = json.loads(body)
        chat = scope["path"] == CHAT
        rid = "chatcmpl-abc" if chat else "cmpl-abc"
        for i, rule in blocked.items():
            internal = f"{rid}-1a2b3c4d" if chat else f"{rid}-{i}-1a2b3c4d"
            sender.send(Notice(request["vllm_xargs"][NOTICE_ARG], internal, rule,
                               f"{rule} fired", f"tag-{i}"))

        def choice(i: int, text: str, finish: str | None) -> dict[str, Any]:
            if chat:
                return {"index": i, "delta" if request.get("stream") else "message":
                        {"role": "assistant", "content": text}, "finish_reason": finish}
            return {"index": i, "text": text, "finish_reason": finish}

        if request.get("stream"):
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/event-stream; charset=utf-8")]})
            for i in range(n_choices):
                for part, finish in (("Hel", None), ("lo", "length" if i == 5 else "stop")):
                    chunk = {"id": rid, "choices": [choice(i, part, finish)]}
                    data = f"data: {json.dumps(chunk)}\n\n".encode()
                    # Split mid-event: the middleware must join the pieces.
                    for piece in (data[:7], data[7:]):
                        await send({"type": "http.response.body", "body": piece,
                                    "more_body": True})
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n",
                        "more_body": False})
            return
        payload = json.dumps({"id": rid, "echo": request, "choices": [
            choice(i, "Hello", "stop") for i in range(n_choices)]}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})

    return app


def _events(text: str) -> list[dict[str, Any]]:
    return [json.loads(line[5:]) for line in text.split("\n\n")
            if line.startswith("data:") and "[DONE]" not in line]


@pytest.mark.parametrize("path", [COMPLETIONS, CHAT])
def test_blocked_choices_end_with_content_filter(path: str, folder: Path,
                                                 inbox: NoticeInbox) -> None:
    n = 1 if path == CHAT else 3
    blocked = {0: "unsafe-code"} if path == CHAT else {1: "unsafe-code"}
    app = ContentFilterMiddleware(fake_openai(folder, blocked, n), inbox=inbox)
    with TestClient(app) as client:
        out = client.post(path, json={"model": "m", "prompt": "p", "n": 1,
                                      "vllm_xargs": {"latentguard_policy": "strict"}}).json()
        # The request reached the app with its own xargs kept and the notice key added.
        assert out["echo"]["vllm_xargs"]["latentguard_policy"] == "strict"
        assert len(out["echo"]["vllm_xargs"][NOTICE_ARG]) == 32
        finishes = [c["finish_reason"] for c in out["choices"]]
        i = next(iter(blocked))
        assert finishes == ["content_filter" if j == i else "stop" for j in range(n)]
        assert out["choices"][i]["latentguard"] == {
            "blocked_by": "unsafe-code", "reason": "unsafe-code fired", "request_tag": f"tag-{i}"}

        resp = client.post(path, json={"model": "m", "prompt": "p", "stream": True})
        events = _events(resp.text)
        assert resp.text.endswith("data: [DONE]\n\n")
        last = {c["index"]: c for e in events for c in e["choices"] if c["finish_reason"]}
        assert {j: c["finish_reason"] for j, c in last.items()} == {
            j: "content_filter" if j == i else "stop" for j in range(n)}
        assert last[i]["latentguard"]["blocked_by"] == "unsafe-code"
        text = "".join(c.get("text") or c.get("delta", {}).get("content", "")
                       for e in events for c in e["choices"])
        assert text == "Hello" * n  # nothing else changed
    assert inbox._notices == {}  # each request's notices are dropped when it ends


def test_unblocked_and_other_requests_pass_unchanged(folder: Path, inbox: NoticeInbox) -> None:
    app = ContentFilterMiddleware(fake_openai(folder, {}), inbox=inbox)
    with TestClient(app) as client:
        out = client.post(COMPLETIONS, json={"model": "m", "prompt": "p"}).json()
        assert out["choices"][0]["finish_reason"] == "stop"
        assert "latentguard" not in out["choices"][0]
        # Not JSON: vLLM's own answer, untouched (here the fake app fails to parse it).
        with pytest.raises(json.JSONDecodeError):
            client.post(COMPLETIONS, content=b"not json")
        # Other paths never reach the notice machinery.
        out = client.post("/v1/other", json={"vllm_xargs": {}, "stream": False}).json()
        assert NOTICE_ARG not in out["echo"]["vllm_xargs"]
