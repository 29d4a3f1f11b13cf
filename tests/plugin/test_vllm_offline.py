"""The plugin inside a real vLLM (offline LLM): capture, block, steer."""

from __future__ import annotations

import time
from typing import Any

import pytest
import torch

from latentguard.monitors.sae import load_sae
from tests.plugin.helpers import LAYER, traces

PROMPTS = {"A": "def add(a, b):", "B": "Hello, world! How are you"}
EOS = 1


def generate(llm: Any, tags: dict[str, dict[str, Any]], max_tokens: int = 10
             ) -> dict[str, Any]:
    from vllm import SamplingParams

    names = list(tags)
    params = [SamplingParams(max_tokens=max_tokens, temperature=0.0,
                             extra_args={"latentguard_tag": tags[n]["tag"], **tags[n]["extra"]})
              for n in names]
    outs = llm.generate([PROMPTS[n] for n in names], params, use_tqdm=False)
    return {n: o.outputs[0] for n, o in zip(names, outs, strict=True)}


def request(tag: str, **extra: Any) -> dict[str, Any]:
    """A request; without a policy it uses `observe`: monitored, with no rules."""
    extra.setdefault("latentguard_policy", "observe")
    return {"tag": tag, "extra": extra}


@pytest.fixture(autouse=True)
def observe_policy(offline) -> None:
    set_rules(offline[1], [], [{"name": "observe", "rules": []}])


def set_rules(sidecar: Any, rules: list[dict[str, Any]], policies: list[dict[str, Any]]) -> None:
    store, runtime = sidecar.sidecar.store, sidecar.sidecar.runtime
    for r in rules:  # written to the store directly, so bound here to the sidecar's SAE
        sidecar.run(store.rules.put(r["name"], {**r, "sae": runtime.sae_identity.model_dump()}))
    for p in policies:
        sidecar.run(store.policies.put(p["name"], p))
    deadline = time.monotonic() + 5
    while not ({r["name"] for r in rules} <= set(runtime.rules)
               and {p["name"] for p in policies} <= set(runtime.policies)):
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_rows_match_the_hf_reference(offline, tiny) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    llm, sidecar, rows = offline
    rows.clear()
    out = generate(llm, {"A": request("ref-A"), "B": request("ref-B")}, max_tokens=6)
    tok = AutoTokenizer.from_pretrained(tiny[0])
    hf = AutoModelForCausalLM.from_pretrained(tiny[0], torch_dtype=torch.float32).eval()
    for name, tag in (("A", "ref-A"), ("B", "ref-B")):
        prompt = tok(PROMPTS[name]).input_ids
        # The last sampled token is never fed back, so its row is never computed.
        ids = prompt + list(out[name].token_ids)[:-1]
        assert sorted(rows.rows[tag]) == list(range(len(ids)))
        assert [rows.tokens[tag][p] for p in range(len(ids))] == ids
        with torch.no_grad():
            ref = hf(torch.tensor([ids]), output_hidden_states=True).hidden_states[LAYER + 1][0]
        got = torch.stack([rows.rows[tag][p] for p in range(len(ids))])
        torch.testing.assert_close(got, ref, atol=2e-4, rtol=2e-4)
    found = traces(sidecar, ["ref-A", "ref-B"])
    assert [t.prompt for t in found["ref-A"].tokens] == \
        [True] * len(tok(PROMPTS["A"]).input_ids) + [False] * 5
    assert found["ref-A"].finish_reason == "length"


def _trigger(rows: Any, tiny: Any, tag_a: str, tag_b: str, n_prompt_a: int
             ) -> tuple[int, int, float]:
    """A feature, a generated position of A and a threshold such that the rule fires there
    first and never on B's generated tokens."""
    sae = load_sae(tiny[1])
    gen_a = sorted(p for p in rows.rows[tag_a] if p >= n_prompt_a)
    acts_a = sae.encode(torch.stack([rows.rows[tag_a][p] for p in gen_a]))
    gen_b = sorted(rows.rows[tag_b])[-len(gen_a):]
    acts_b = sae.encode(torch.stack([rows.rows[tag_b][p] for p in gen_b]))
    best = None
    for j in range(1, min(4, len(gen_a) - 2)):
        before = torch.maximum(acts_a[:j].max(0).values, acts_b.max(0).values)
        margin = acts_a[j] - before
        f = int(margin.argmax())
        if margin[f] > 0.05 and (best is None or margin[f] > best[3]):
            best = (f, j, float(before[f] + margin[f] / 2), float(margin[f]))
    assert best is not None, "no feature separates A's tokens from B's"
    return best[0], best[1], best[2]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_block_stops_one_request_and_leaves_the_other(offline, tiny, mode) -> None:
    from transformers import AutoTokenizer

    llm, sidecar, rows = offline
    rows.clear()
    base = generate(llm, {"A": request(f"base-{mode}-A"), "B": request(f"base-{mode}-B")})
    n_prompt = len(AutoTokenizer.from_pretrained(tiny[0])(PROMPTS["A"]).input_ids)
    f, j, threshold = _trigger(rows, tiny, f"base-{mode}-A", f"base-{mode}-B", n_prompt)
    rule = {"name": f"trip-{mode}", "severity": "high", "scope": "generation",
            "when": {"signal": {"feature": f, "threshold": threshold}},
            "action": {"type": "block"}}
    set_rules(sidecar, [rule], [{"name": f"p-{mode}", "rules": [rule["name"]], "mode": mode}])

    out = generate(llm, {"A": request(f"blk-{mode}-A", latentguard_policy=f"p-{mode}"),
                         "B": request(f"blk-{mode}-B", latentguard_policy=f"p-{mode}")})
    a, a0 = list(out["A"].token_ids), list(base["A"].token_ids)
    # Generated token j is fed back (and crosses the threshold) at the step sampling j + 1.
    assert a[: j + 1] == a0[: j + 1]
    after = a[j + 1:]
    assert after and after[-1] == EOS and out["A"].finish_reason == "stop"
    if mode == "sync":
        assert after == [EOS], "a token was sampled after the block trigger"
    else:
        assert len(after) <= 2, "async mode let more than one token through"
    assert list(out["B"].token_ids) == list(base["B"].token_ids)

    found = traces(sidecar, [f"blk-{mode}-A", f"blk-{mode}-B"])
    blocked = found[f"blk-{mode}-A"]
    assert blocked.blocked and blocked.blocked_by == rule["name"]
    assert blocked.finish_reason == "blocked" and blocked.hits[0].position == n_prompt + j
    assert not found[f"blk-{mode}-B"].hits


def test_steer_changes_only_the_target(offline, tiny) -> None:
    import json

    llm, sidecar, rows = offline
    base = generate(llm, {"A": request("st-base-A"), "B": request("st-base-B")})
    steer = {"mode": "add", "features": [{"feature": 7, "value": 40.0}]}
    out = generate(llm, {"A": request("st-A", latentguard_steer=json.dumps(steer)),
                         "B": request("st-B")})
    assert list(out["A"].token_ids) != list(base["A"].token_ids)
    assert list(out["B"].token_ids) == list(base["B"].token_ids)
    # The sidecar records the stream as the model computed it, before the edit.
    found = traces(sidecar, ["st-A", "st-B"])
    assert [t.position for t in found["st-A"].tokens] == sorted(rows.rows["st-A"])


def test_steer_preserve_norm_rescales_the_stream(offline) -> None:
    import json

    llm = offline[0]
    steer = {"mode": "add", "features": [{"feature": 7, "value": 40.0}]}
    added = generate(llm, {"A": request("pn-add", latentguard_steer=json.dumps(steer))})
    kept = generate(llm, {"A": request("pn-keep", latentguard_steer=json.dumps(
        {**steer, "preserve_norm": True}))})
    # Same direction, but each row brought back to its own norm: a different stream.
    assert list(kept["A"].token_ids) != list(added["A"].token_ids)
