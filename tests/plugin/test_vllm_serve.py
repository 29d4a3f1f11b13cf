"""`latentguard vllm` (vLLM's OpenAI server with the plugin, plus a supervised sidecar):
Generate and Inspect over gRPC, unchanged OpenAI clients (the official `openai` one: blocks seen as
`content_filter`, completions and chat), and a sidecar outage."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import openai
import pytest

from latentguard.cli.launcher import PLAIN_CHAT_TEMPLATE, chat_template_args
from latentguard.cli.main import main as cli
from latentguard.lab.models.registry import GEMMA_CHAT_TEMPLATE
from latentguard.server.store.embedded import free_port
from latentguard.v1 import monitor_pb2, monitor_pb2_grpc, traces_pb2, traces_pb2_grpc

RULES = """\
rules:
  - name: always
    description: fires on the first generated token (ReLU features are never below zero)
    severity: critical
    when: {feature: 0, op: ">=", threshold: 0.0}
    action: {type: block}
policies:
  - {name: default, rules: []}
  - {name: strict, rules: [always], mode: sync}
  - {name: open, rules: [], mode: sync, timeout_ms: 100, on_failure: open}
  - {name: closed, rules: [], mode: sync, timeout_ms: 100, on_failure: closed}
"""


class Stack:
    def __init__(self, proc: subprocess.Popen[bytes], data: Path, port: int, model: str) -> None:
        self.proc, self.data, self.port, self.model = proc, data, port, model
        self.target = f"unix://{data / 'latentguard.sock'}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def sidecar_pid(self) -> int:
        return int((self.data / "latentguard.pid").read_text())

    def sidecar_up(self) -> bool:
        return cli(["health", "--target", self.target, "--timeout", "1"]) == 0

    def complete(self, prompt: str, **body: Any) -> dict[str, Any]:
        resp = httpx.post(f"{self.url}/v1/completions", timeout=120,
                          json={"model": self.model, "prompt": prompt, **body})
        resp.raise_for_status()
        return resp.json()

    def traces(self, tag_prefix: str = "", timeout: float = 15.0, n: int = 1
               ) -> list[traces_pb2.Trace]:
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.target) as ch:
            stub = traces_pb2_grpc.TracesStub(ch)
            while True:
                found = [t for t in stub.ListTraces(traces_pb2.ListTracesRequest(
                    page_size=1000)).traces if t.request_tag.startswith(tag_prefix)]
                if len(found) >= n:
                    return found
                assert time.monotonic() < deadline, f"no trace for {tag_prefix!r}"
                time.sleep(0.2)


@pytest.fixture(scope="module")
def stack(tiny: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[Stack]:
    model, sae = tiny
    data = tmp_path_factory.mktemp("stack")
    rules = data / "rules.yaml"
    rules.write_text(RULES)
    port = free_port()
    env = {**os.environ, "LATENTGUARD_DATA_DIR": str(data), "LATENTGUARD_SAE_PATH": str(sae),
           "LATENTGUARD_RULES_FILE": str(rules), "VLLM_CPU_KVCACHE_SPACE": "1"}
    log = open(data / "stack.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "latentguard.cli.main", "vllm", str(model),
         "--port", str(port), "--dtype", "float32", "--max-model-len", "512"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    s = Stack(proc, data, port, str(model))
    deadline = time.monotonic() + 300
    while True:
        assert proc.poll() is None, (data / "stack.log").read_text()[-3000:]
        try:
            if httpx.get(f"{s.url}/health", timeout=2).status_code == 200 and s.sidecar_up():
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "the stack did not start"
        time.sleep(1)
    try:
        yield s
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def test_plain_openai_clients_are_monitored(stack: Stack) -> None:
    out = stack.complete("def add(a, b):", max_tokens=5, temperature=0)
    assert out["choices"][0]["finish_reason"] == "length"
    trace = stack.traces("cmpl-")[0]
    assert trace.policy == "default" and trace.completion_tokens == 5


def test_generate_streams_tokens_features_and_the_finish(stack: Stack, capsys) -> None:
    with grpc.insecure_channel(stack.target) as ch:
        stub = monitor_pb2_grpc.MonitorStub(ch)
        events = list(stub.Generate(monitor_pb2.GenerateRequest(
            prompt="Hello, world!", max_tokens=5, temperature=0, top_k=3), timeout=120))
        kinds = [e.WhichOneof("kind") for e in events]
        assert kinds[-1] == "finish" and "token" in kinds
        features = [e.features for e in events if e.WhichOneof("kind") == "features"]
        assert [f.prompt for f in features][:2] == [True, True]
        assert all(len(f.top_features) <= 3 for f in features)
        finish = events[-1].finish
        assert finish.reason == "length" and finish.trace_id

        blocked = list(stub.Generate(monitor_pb2.GenerateRequest(
            prompt="Hello, world!", max_tokens=20, temperature=0, policy="strict"), timeout=120))
        assert blocked[-1].finish.reason == "blocked"
        assert blocked[-1].finish.blocked_by == "always"
        assert any(e.WhichOneof("kind") == "verdict" for e in blocked)
        n_tokens = sum(e.WhichOneof("kind") == "token" for e in blocked)
        assert n_tokens <= 2  # the first generated token, then EOS

        traces = traces_pb2_grpc.TracesStub(ch)
        trace = traces.GetTrace(traces_pb2.GetTraceRequest(id=blocked[-1].finish.trace_id))
        assert trace.blocked and trace.blocked_by == "always"
        assert trace.tokens[0].text == "Hel"  # token text from the model's tokenizer
    assert cli(["traces", "review", trace.id, "--label", "tp", "--reviewer", "ops",
                "--target", stack.target]) == 0
    assert cli(["traces", "show", trace.id, "--target", stack.target]) == 0
    out = capsys.readouterr().out
    assert "BLOCKED by always" in out and "true_positive by ops" in out


def test_inspect_returns_features_per_token(stack: Stack) -> None:
    with grpc.insecure_channel(stack.target) as ch:
        resp = monitor_pb2_grpc.MonitorStub(ch).Inspect(
            monitor_pb2.InspectRequest(text="eval(input())", features=[3, 5], top_k=4),
            timeout=120)
        assert [t.text for t in resp.tokens] == ["ev", "al", "(", "input", "()", ")"]
        assert [t.position for t in resp.tokens] == list(range(6))
        assert [s.feature for s in resp.series] == [3, 5]
        assert all(len(s.values) == 6 for s in resp.series)
        trace = traces_pb2_grpc.TracesStub(ch).GetTrace(
            traces_pb2.GetTraceRequest(id=resp.trace_id))
        assert len(trace.tokens) == 6 and all(t.prompt for t in trace.tokens)


STRICT = {"vllm_xargs": {"latentguard_policy": "strict"}}
MESSAGES: list[Any] = [{"role": "system", "content": "Be brief."},
                       {"role": "user", "content": "def add(a, b):"}]


def _blocked(choice: Any) -> dict[str, Any]:
    """The `latentguard` field of a blocked choice (the openai client keeps extra fields)."""
    assert choice.finish_reason == "content_filter", choice
    info = (choice.model_extra or {})["latentguard"]
    assert info["blocked_by"] == "always" and info["request_tag"]
    return info


def test_openai_client_sees_blocks_as_content_filter(stack: Stack) -> None:
    client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key="none", max_retries=0)
    plain = client.completions.create(model=stack.model, prompt="def add(a, b):", max_tokens=4,
                                      temperature=0)
    assert plain.choices[0].finish_reason == "length"
    assert "latentguard" not in (plain.choices[0].model_extra or {})

    out = client.completions.create(model=stack.model, prompt="Hello", max_tokens=20,
                                    temperature=0, extra_body=STRICT)
    info = _blocked(out.choices[0])
    assert out.usage is not None and out.usage.completion_tokens <= 2  # first token, then EOS
    trace = stack.traces(info["request_tag"])[0]  # the trace the field names
    assert trace.blocked and trace.blocked_by == "always"

    chunks = list(client.completions.create(
        model=stack.model, prompt="Hello", max_tokens=20, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_body=STRICT))
    finished = [c for chunk in chunks for c in chunk.choices if c.finish_reason]
    assert len(finished) == 1
    _blocked(finished[0])

    # n > 1 and several prompts: each choice is matched to its own vLLM request.
    many = client.completions.create(model=stack.model, prompt=["Hello", "def"], n=2,
                                     max_tokens=20, temperature=0.8, extra_body=STRICT)
    assert sorted(c.index for c in many.choices) == [0, 1, 2, 3]
    tags = {_blocked(c)["request_tag"] for c in many.choices}
    assert len(tags) == 4


def test_chat_completions_with_a_template(stack: Stack) -> None:
    client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key="none", max_retries=0)
    out = client.chat.completions.create(model=stack.model, messages=MESSAGES, max_tokens=5,
                                         temperature=0)
    assert out.choices[0].finish_reason == "length" and out.choices[0].message.content
    trace = stack.traces("chatcmpl-")[0]
    assert trace.completion_tokens == 5

    blocked = client.chat.completions.create(model=stack.model, messages=MESSAGES,
                                             max_tokens=20, temperature=0, extra_body=STRICT)
    _blocked(blocked.choices[0])
    chunks = list(client.chat.completions.create(
        model=stack.model, messages=MESSAGES, max_tokens=20, temperature=0, stream=True,
        extra_body=STRICT))
    finished = [c for chunk in chunks for c in chunk.choices if c.finish_reason]
    assert len(finished) == 1
    _blocked(finished[0])

    # Generate's chat input goes through the same endpoint.
    with grpc.insecure_channel(stack.target) as ch:
        stub = monitor_pb2_grpc.MonitorStub(ch)
        chat = monitor_pb2.Messages(messages=[monitor_pb2.ChatMessage(role=m["role"],
                                                                      content=m["content"])
                                              for m in MESSAGES])
        events = list(stub.Generate(monitor_pb2.GenerateRequest(
            chat=chat, max_tokens=4, temperature=0), timeout=120))
        assert events[-1].finish.reason == "length" and events[-1].finish.trace_id
        assert any(e.WhichOneof("kind") == "token" for e in events)
        events = list(stub.Generate(monitor_pb2.GenerateRequest(
            chat=chat, max_tokens=20, temperature=0, policy="strict"), timeout=120))
        assert events[-1].finish.reason == "blocked"
        assert events[-1].finish.blocked_by == "always"


def test_the_launcher_gives_a_model_without_a_chat_template_one(
        tiny: tuple[Path, Path], tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "gemma3_text"}))
    args = chat_template_args(str(model), [], tmp_path / "data")
    assert args[0] == "--chat-template" and Path(args[1]).read_text() == GEMMA_CHAT_TEMPLATE
    args = chat_template_args(str(tiny[0]), [], tmp_path / "data")
    assert Path(args[1]).read_text() == PLAIN_CHAT_TEMPLATE
    # Not when the caller passes one, the folder has one, or the model is no local folder.
    assert chat_template_args(str(model), ["--chat-template", "x.jinja"], tmp_path) == []
    assert chat_template_args("google/gemma-3-270m", [], tmp_path) == []
    (model / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ x }}"}))
    assert chat_template_args(str(model), [], tmp_path) == []


def _stream(stack: Stack, policy: str, out: dict[str, Any], first: threading.Event) -> None:
    body = {"model": stack.model, "prompt": "Hello", "max_tokens": 400, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True},
            "vllm_xargs": {"latentguard_policy": policy}}
    tokens, finish = 0, None
    with httpx.stream("POST", f"{stack.url}/v1/completions", json=body, timeout=120) as resp:
        for line in resp.iter_lines():
            if not line.startswith("data:") or line.endswith("[DONE]"):
                continue
            chunk = json.loads(line[5:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            for choice in chunk["choices"]:
                first.set()
                finish = choice.get("finish_reason") or finish
    out[policy] = (tokens, finish)


def test_sidecar_outage_follows_each_policy_and_recovers(stack: Stack) -> None:
    results: dict[str, Any] = {}
    started = {p: threading.Event() for p in ("open", "closed")}
    threads = {p: threading.Thread(target=_stream, args=(stack, p, results, started[p]))
               for p in ("open", "closed")}
    for t in threads.values():
        t.start()
    for event in started.values():
        assert event.wait(60)
    # First slow (frozen: sync steps time out), then gone, both mid-generation.
    pid = stack.sidecar_pid()
    os.kill(pid, signal.SIGSTOP)
    threads["closed"].join(60)
    os.kill(pid, signal.SIGKILL)
    threads["open"].join(120)
    n_open, finish_open = results["open"]
    n_closed, finish_closed = results["closed"]
    assert (finish_open, n_open) == ("length", 400)  # fail-open: generation went on
    assert finish_closed == "content_filter", "fail-closed request was not blocked"
    assert n_closed < 400
    # vLLM kept serving while the sidecar was gone.
    assert stack.complete("def", max_tokens=3)["choices"][0]["finish_reason"] == "length"
    # The launcher restarts the sidecar, and the plugin reconnects by itself.
    deadline = time.monotonic() + 60
    while not stack.sidecar_up():
        assert time.monotonic() < deadline, "the sidecar was not restarted"
        time.sleep(0.5)
    time.sleep(6)  # the plugin's reconnect backoff is at most 5 s
    stack.complete("Hello", max_tokens=4, temperature=0,
                   vllm_xargs={"latentguard_tag": "after-restart"})
    assert stack.traces("after-restart")[0].completion_tokens == 4
