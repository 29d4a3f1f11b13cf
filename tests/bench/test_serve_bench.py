"""bench/serve_bench.py and bench/serving.py: the pieces that need no vLLM, against a real
sidecar process (tiny SAE) over a real gRPC stream."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import serve_bench as sb
from bench.serving import observe_pack, plugin_env, sidecar_process
from latentguard.lab.tinymodel import build_tiny_sae
from latentguard.monitors.rules import load_rule_pack
from latentguard.monitors.sae import load_sae

PACK = """\
rules:
- name: unsafe-code
  severity: high
  when: {feature: 3, threshold: 0.5}
  action: {type: block}
- name: other
  when: {feature: 4, threshold: 0.5}
policies:
- name: default
  rules: ['*']
"""


@pytest.fixture(scope="module")
def sae(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = build_tiny_sae(tmp_path_factory.mktemp("sae") / "tiny-sae")
    (folder / "rules.yaml").write_text(PACK)
    return folder


def test_bench_pack_alerts_everywhere_but_keeps_one_block_rule(sae: Path, tmp_path: Path) -> None:
    pack = load_rule_pack(sb.bench_pack(sae / "rules.yaml", tmp_path / "b.yaml").read_text())
    actions = {r.name: r.action.type for r in pack.rules}
    assert actions == {"unsafe-code": "alert", "other": "alert", "unsafe-code-block": "block"}
    policies = {p.name: p for p in pack.policies}
    assert policies["bench-async"].mode == "async" and policies["bench-sync"].mode == "sync"
    assert "unsafe-code-block" not in policies["bench-sync"].rules
    assert policies["block-sync"].rules == ["unsafe-code-block"]
    observe = load_rule_pack(observe_pack(sae / "rules.yaml", tmp_path / "o.yaml").read_text())
    assert {r.action.type for r in observe.rules} == {"alert"}
    assert [p.name for p in observe.policies] == ["observe"]


def test_stdlib_prompts_are_function_heads() -> None:
    prompts = sb.stdlib_prompts(40)
    assert len(prompts) == len(set(prompts)) == 40
    assert all(p.startswith(("def ", "@")) and p.endswith("\n    ") for p in prompts)


def test_percentile() -> None:
    values = [float(v) for v in range(1, 101)]
    assert sb.percentile(values, 50) in (50.0, 51.0)
    assert sb.percentile(values, 99) == 99.0
    assert sb.percentile([], 50) != sb.percentile([], 50)  # nan


def test_plugin_env_turns_the_plugin_off_for_plain_vllm() -> None:
    assert plugin_env(None)["LATENTGUARD_DISABLE"] == "1"


def test_ingest_through_a_sidecar_process_stores_every_trace(sae: Path, tmp_path: Path) -> None:
    pack = sb.bench_pack(sae / "rules.yaml", tmp_path / "b.yaml")
    with sidecar_process(tmp_path / "sc", sae=sae, rules=pack) as sidecar:
        got = sb.ingest(sidecar, load_sae(sae), requests=4, steps=5, rows_per_request=3)
        assert got["rows"] == 60 and got["rows_per_s"] > 0
        assert got["sidecar_cpu_s"] > 0 and got["rows_per_s_per_core"] > 0
        traces = sidecar.traces([f"ingest-3-{i}" for i in range(4)], timeout_s=30)
        # A trace accepted is a trace stored: every row of every request is in it.
        assert all((t.completion_tokens, t.finish_reason) == (15, "length")
                   for t in traces.values()), traces
        with pytest.raises(TimeoutError, match="no ended trace"):
            sidecar.traces(["never-sent"], timeout_s=1)


ALWAYS = """\
rules:
- name: unsafe-code
  severity: high
  when: {feature: 3, threshold: -1.0}
  action: {type: block}
- name: other
  when: {feature: 4, threshold: 0.5}
"""


@pytest.mark.timeout(900)
def test_serve_bench_end_to_end_on_the_tiny_model(tmp_path: Path) -> None:
    """The whole benchmark on the tiny model: two real vLLM servers, a sidecar process."""
    import json
    import socket

    from latentguard.lab.tinymodel import build_tiny_model

    model = build_tiny_model(tmp_path / "model")
    sae = build_tiny_sae(tmp_path / "sae")
    (sae / "rules.yaml").write_text(ALWAYS)  # the block rule fires on the first token
    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    out = tmp_path / "serve.json"
    assert sb.main(["--model", str(model), "--sae", str(sae), "--out", str(out),
                    "--batches", "1", "2", "--max-tokens", "6", "--block-copies", "2",
                    "--port", str(ports[0]), "--monitored-port", str(ports[1]),
                    "--repeats", "2", "--ingest-steps", "5", "--max-model-len", "512"]) == 0
    r = json.loads(out.read_text())
    rows = {(x["batch"], x["mode"]): x for x in r["throughput"]}
    assert set(rows) == {(b, m) for b in (1, 2) for m in ("plain", "async", "sync")}
    for (b, mode), x in rows.items():
        # ignore_eos: every request writes exactly --max-tokens tokens, in every mode.
        assert x["tokens"] == x["requests"] * 6 and x["requests"] == max(4, 2 * b)
        assert x["tokens_per_s"] > 0 and x["tpot_p50_ms"] > 0
        assert len(x["runs"]) == 2  # repeats, interleaved
        assert x["tokens_per_s"] == pytest.approx(
            sorted(run["tokens_per_s"] for run in x["runs"])[0] / 2
            + sorted(run["tokens_per_s"] for run in x["runs"])[1] / 2)
        if mode != "plain":
            assert x["sidecar_cpu_s"] > 0 and x["sidecar_peak_rss_mb"] > 50
            # Each repeat against the plain run beside it; the ratio is their median.
            plain = rows[b, "plain"]["runs"]
            ratios = [m["tokens_per_s"] / p["tokens_per_s"]
                      for m, p in zip(x["runs"], plain, strict=True)]
            assert x["ratios"] == pytest.approx(ratios)
            assert x["ratio"] == pytest.approx(sum(ratios) / 2)
    block = r["block"]
    assert block["sync"]["blocked"] == 2 and block["sync"]["tokens_after_trigger_max"] == 0
    # Async: the verdict lands some steps later. The tiny model's steps take milliseconds, so
    # that can be more than one step here (on Gemma, ~100 ms a step, the benchmark measures 1).
    assert block["async"]["blocked"] == 2 and block["async"]["tokens_after_trigger_max"] <= 3
    assert [i["rows"] for i in r["ingest"]] == [32 * 5, 4 * 1 * 256]
    assert 0 < r["encode"]["fraction"] <= 1.5
