"""Tokens with every role, a model folder whose tokenizer gives the tiny SAE's traces readable
text, and requests driven through Monitor.Stream the way the plugin sends them: what the
console's tests and its screenshots (bench/console_screenshots.py) look at."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import yaml
from tokenizers import Tokenizer, models

from latentguard.server.auth import hash_token
from latentguard.server.config import TokenEntry
from latentguard.v1 import monitor_pb2, traces_pb2, traces_pb2_grpc
from tests.server.fixtures import StreamDriver, rows

SECRETS = {"reader": "r-secret", "reviewer": "v-secret", "admin": "a-secret",
           "monitor": "m-secret"}
NAMES = {role: f"{role}-ann" for role in SECRETS}

PROMPT = ["import", " subprocess", "\n", "def", " run", "(cmd", "):", "\n", "    ", "return",
          " subprocess", "."]
UNSAFE = ["run", "(cmd", ",", " shell", "=True", ")", "\n"]
SAFE = ["run", "([", "cmd", "],", " check", "=True", ")", "\n"]
LEGAL = ["You", " should", " consult", " a", " lawyer", " about", " the", " contract", "."]
WORDS = sorted({*PROMPT, *UNSAFE, *SAFE, *LEGAL, "Is", " this", " legal", "?"})


def entries() -> list[TokenEntry]:
    return [TokenEntry(name=NAMES[role], role=role, token_sha256=hash_token(secret))
            for role, secret in SECRETS.items()]


def tokens_file(path: Path) -> Path:
    path.write_text(yaml.safe_dump([e.model_dump() for e in entries()]))
    return path


def md(role: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {SECRETS[role]}"),)


def bearer(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {SECRETS[role]}"}


def model_folder(folder: Path) -> Path:
    """A folder with a word-level tokenizer.json: the sidecar decodes token ids to WORDS."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(WORDS)}}
    Tokenizer(models.WordLevel(vocab, unk_token="[UNK]")).save(str(folder / "tokenizer.json"))
    return folder


def ids(words: list[str]) -> list[int]:
    return [WORDS.index(w) + 1 for w in words]


class Requests:
    """Requests over one Monitor stream: a prefill step, then one step per generated token,
    as the plugin sends them; stops generating when a verdict blocks."""

    def __init__(self, channel: grpc.Channel, model: str) -> None:
        self.drive = StreamDriver(channel, metadata=md("monitor"))
        self.drive.hello()
        self.model = model
        self.step = 0

    def run(self, tag: str, prompt: list[str], completion: list[str],
            prompt_values: list[dict[int, float]], values: list[dict[int, float]],
            policy: str = "") -> bool:
        """One request; `values` are each generated token's input dimensions (with the tiny
        SAE, feature i reads dimension i). Returns whether it was blocked."""
        self.step += 1
        self.drive.step(step=self.step, started=[monitor_pb2.RequestStart(
            request_tag=tag, policy=policy, model=self.model, prompt_tokens=len(prompt),
            prompt_text="".join(prompt))],
            spans=[monitor_pb2.RowSpan(request_tag=tag, row_start=0,
                                       positions=list(range(len(prompt))),
                                       token_ids=ids(prompt), prefill=True)],
            rows=rows(*prompt_values))
        blocked = False
        sent: list[str] = []
        for i, (word, value) in enumerate(zip(completion, values, strict=True)):
            self.step += 1
            reply = self.drive.step(step=self.step, spans=[monitor_pb2.RowSpan(
                request_tag=tag, row_start=0, positions=[len(prompt) + i],
                token_ids=ids([word]))], rows=rows(value))
            sent.append(word)
            if any(v.kind == monitor_pb2.VERDICT_KIND_BLOCK for v in reply.verdicts.verdicts):
                blocked = True
                break
        self.step += 1
        self.drive.step(step=self.step, finished=[monitor_pb2.RequestEnd(
            request_tag=tag, finish_reason="stop", completion_tokens=len(sent),
            completion_text="".join(sent))])
        return blocked

    def unsafe(self, tag: str) -> bool:
        """Feature 3 (unsafe code) rises over the completion and passes 2.0 at ` shell`."""
        rising = [0.2, 0.4, 0.9, 2.6, 3.1, 1.0, 0.1]
        return self.run(tag, PROMPT, UNSAFE, [{3: 0.3 if w == " subprocess" else 0.0}
                                              for w in PROMPT],
                        [{3: v, 1: 0.5} for v in rising])

    def safe(self, tag: str) -> bool:
        return self.run(tag, PROMPT, SAFE, [{} for _ in PROMPT],
                        [{3: 0.3}, {3: 0.5}, {}, {}, {3: 0.2}, {}, {}, {}])

    def legal(self, tag: str) -> bool:
        """Feature 5 (legal advice) over a window of two: watch-5 (low) alerts."""
        question = ["Is", " this", " legal", "?"]
        return self.run(tag, question, LEGAL, [{5: 0.3}, {}, {5: 0.4}, {}],
                        [{}, {}, {5: 0.7}, {}, {5: 1.2}, {5: 0.5}, {}, {5: 0.4}, {}])

    def close(self) -> None:
        self.drive.close()


def wait_for_traces(channel: grpc.Channel, n: int, timeout: float = 30) -> list[traces_pb2.Trace]:
    """The stored traces, once there are `n` (the writer stores them in the background)."""
    stub = traces_pb2_grpc.TracesStub(channel)
    deadline = time.monotonic() + timeout
    while True:
        listed = list(stub.ListTraces(traces_pb2.ListTracesRequest(), metadata=md("reader"))
                      .traces)
        if len(listed) >= n or time.monotonic() > deadline:
            assert len(listed) >= n, f"{len(listed)} traces stored, expected {n}"
            return listed
        time.sleep(0.05)
