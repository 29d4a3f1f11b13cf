"""What the serving benchmarks run: the sidecar as its own process, and vLLM with the plugin.

`sidecar_process` starts `latentguard serve` exactly as the launcher does (own process, own
socket, its own data folder), waits until gRPC health says SERVING, and reads the traces it
stored back over the public Traces API. `plugin_env` is the environment a vLLM engine needs to
be monitored by it (or not: `plugin_env(None)` disables the plugin for the plain-vLLM baseline).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from latentguard.cli.client import connect
from latentguard.cli.launcher import grpc_serving, wait_until
from latentguard.monitors.rules import dump_rule_pack, load_rule_pack
from latentguard.v1 import traces_pb2

log = logging.getLogger(__name__)


@dataclass
class SidecarProcess:
    proc: subprocess.Popen[bytes]
    target: str
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def traces(self, tags: list[str], timeout_s: float = 60.0) -> dict[str, traces_pb2.Trace]:
        """The ended trace of each tag (the sidecar writes them in the background: wait)."""
        client = connect(self.target)
        try:
            deadline = time.monotonic() + timeout_s
            want = set(tags)
            while True:
                found: dict[str, list[traces_pb2.Trace]] = {}
                token = ""
                while True:
                    page = client.traces.ListTraces(traces_pb2.ListTracesRequest(
                        page_size=1000, page_token=token), timeout=30)
                    for t in page.traces:
                        if t.request_tag in want and t.finish_reason:
                            found.setdefault(t.request_tag, []).append(t)
                    token = page.next_page_token
                    if not token:
                        break
                if len(found) == len(want):
                    split = sorted(tag for tag, ts in found.items() if len(ts) > 1)
                    if split:
                        # One request, one trace: more means the worker lost track of it.
                        log.warning("%d requests have more than one trace (%s, ...); using "
                                    "the one with the most tokens", len(split), split[0])
                    return {tag: max(ts, key=lambda t: t.prompt_tokens + t.completion_tokens)
                            for tag, ts in found.items()}
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no ended trace for {sorted(want - set(found))[:5]} "
                                       f"after {timeout_s:.0f} s (sidecar log: {self.log})")
                time.sleep(0.5)
        finally:
            client.close()


@contextmanager
def sidecar_process(data_dir: Path, *, sae: Path, rules: Path | None = None,
                    cpus: set[int] | None = None) -> Iterator[SidecarProcess]:
    """`latentguard serve` in its own process (pinned to `cpus` when given), stopped on exit."""
    data_dir = data_dir.resolve()  # redis-server runs elsewhere: a relative socket path breaks
    data_dir.mkdir(parents=True, exist_ok=True)
    target = f"unix://{data_dir / 'lg.sock'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LATENTGUARD_")}
    env.update(LATENTGUARD_DATA_DIR=str(data_dir), LATENTGUARD_LISTEN=target,
               LATENTGUARD_SAE_PATH=str(sae), LATENTGUARD_LOG_LEVEL="WARNING")
    if rules is not None:
        env["LATENTGUARD_RULES_FILE"] = str(rules)
    log_path = data_dir / "sidecar.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "latentguard.cli.main", "serve"],
                                env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        if cpus:
            os.sched_setaffinity(proc.pid, cpus)
        wait_until(lambda: grpc_serving(target), proc, f"the sidecar (log: {log_path})", 120)
        yield SidecarProcess(proc=proc, target=target, log=log_path)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


def plugin_env(sidecar: SidecarProcess | None, sae: Path | None = None) -> dict[str, str]:
    """Variables for a vLLM engine monitored by `sidecar` (None: the plugin stays off)."""
    env = {"VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2")}
    if sidecar is None:
        env["LATENTGUARD_DISABLE"] = "1"
    else:
        env.update(LATENTGUARD_DISABLE="0", LATENTGUARD_SIDECAR=sidecar.target,
                   LATENTGUARD_SAE_PATH=str(sae) if sae else "")
    return env


def read_pack(pack: Path) -> dict[str, Any]:
    """A rule pack's YAML as data, after checking that it is a valid pack."""
    text = pack.read_text(encoding="utf-8")
    load_rule_pack(text, str(pack))  # fail here, with file and line, on a bad pack
    return yaml.safe_load(text)


def alerting(rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Copies of `rules` that only alert: monitoring that never changes what the model writes."""
    return [{**rule, "action": {"type": "alert"}} for rule in rules]


def write_pack(data: dict[str, Any], out: Path) -> Path:
    out.write_text(dump_rule_pack(data), encoding="utf-8")
    return out


def observe_pack(pack: Path, out: Path, policy: str = "observe") -> Path:
    """A copy of rule pack `pack` whose block and steer rules only alert, with one async policy
    `policy` running all of them."""
    data = read_pack(pack)
    data["rules"] = alerting(data.get("rules", []))
    data["policies"] = [{"name": policy, "rules": ["*"], "mode": "async", "on_failure": "open"}]
    return write_pack(data, out)
