"""Code the model itself writes, labelled by bandit: what the monitor watches in serving.

    .venv/bin/python -m bench.model_code --model ~/.cache/latentguard/models/gemma-3-270m \\
        --data ~/.cache/latentguard/code-corpus/corpus.jsonl --out ~/.cache/latentguard/model-code

The heads are functions of the third-party code corpus (``bench.code_corpus``), each split kept
apart (train packages / held-out packages, the corpus's frozen split): every function bandit
flags, cut just before its first flagged line (so the model writes that line, or something
else), and as many clean ones, cut at the same relative depth; at most ``--per-package`` heads
per package and label, so a few big packages do not make the set; heads that bandit flags by
themselves are dropped. The model continues each greedily in vLLM (no plugin: this only makes
data) up to ``--max-tokens`` tokens or the end of the function, and bandit (medium severity and
above) judges head + completion, cut to the longest prefix that parses: the label is whether the
*completed* function is unsafe, so any flag comes from what the model wrote.

Outputs ``train.jsonl`` and ``heldout.jsonl`` in ``latentguard eval`` form (``prompt`` the head,
``text`` the completion, ``label``, ``group`` the package) and ``summary.json``. Measure a pack on
them with ``latentguard eval OUT/heldout.jsonl --as generation ...``: the head is fed as prompt
tokens, the completion as generated ones, as in serving.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.common import read_rows
from bench.steering_eval import MIN_SEVERITY, STOPS, flagged_tests, head_before, parseable
from bench.unsafe_code_data import at_least, bandit_results

log = logging.getLogger("model_code")


def select_heads(rows: Sequence[dict[str, Any]], split: str, per_package: int, seed: int
                 ) -> list[dict[str, Any]]:
    """The split's heads: each flagged function cut before its first flagged line, and clean
    ones (as many, from the same packages where they have them) cut at the same relative
    depth; at most ``per_package`` per package and label; heads bandit flags alone dropped."""
    rng = random.Random(seed)
    by_package: dict[str, dict[int, list[dict[str, Any]]]] = defaultdict(lambda: {0: [], 1: []})
    for r in rows:
        if r["split"] == split:
            by_package[r["group"]][int(r["label"])].append(r)
    unsafe: list[dict[str, Any]] = []
    for package in sorted(by_package):
        found = list(by_package[package][1])
        rng.shuffle(found)
        unsafe += found[:per_package]
    heads: list[dict[str, Any]] = []
    depth: dict[str, list[float]] = defaultdict(list)
    """Package -> relative depth of each flagged head's cut."""
    for r, issues in zip(unsafe, bandit_results([r["text"] for r in unsafe]), strict=True):
        lines = sorted(x["line_number"] for x in issues or []
                       if at_least(x["issue_severity"], MIN_SEVERITY))
        head = head_before(r["text"], lines[0]) if lines else None
        if head is not None:
            heads.append(_head(r, head, lines[0], 1))
            depth[r["group"]].append(lines[0] / len(r["text"].splitlines()))
    all_depths = [d for ds in depth.values() for d in ds] or [0.5]
    for package in sorted(by_package):
        clean = list(by_package[package][0])
        rng.shuffle(clean)
        want = max(len(depth.get(package, [])), 1)  # a package without flagged code: one
        for i, r in enumerate(clean[:min(want, per_package)]):
            ds = depth.get(package) or all_depths
            n = len(r["text"].splitlines())
            cut = min(n, max(2, round(ds[i % len(ds)] * n)))
            head = head_before(r["text"], cut)
            if head is not None:
                heads.append(_head(r, head, cut, 0))
    alone = flagged_tests([h["prompt"] + "pass\n" for h in heads])
    return [h for h, v in zip(heads, alone, strict=True) if v == []]


def _head(row: dict[str, Any], prompt: str, cut: int, label: int) -> dict[str, Any]:
    return {"id": row["id"], "group": row["group"], "kind": row.get("kind", ""),
            "head_label": label, "prompt": prompt, "cut": cut}


def function_end(prompt: str, completion: str) -> str:
    """The completion cut where the function ends: at the first non-blank line indented no
    deeper than the function's ``def`` (the model went on to other code)."""
    first = prompt.lstrip("\n").splitlines()[0] if prompt.strip() else ""
    base = len(first) - len(first.lstrip())
    lines = completion.splitlines(keepends=True)
    # The first line continues the prompt's last (indented) line: never an end.
    for i, line in enumerate(lines[1:], start=1):
        if line.strip() and len(line) - len(line.lstrip()) <= base:
            return "".join(lines[:i])
    return completion


def label_completions(heads: Sequence[dict[str, Any]], completions: Sequence[str]
                      ) -> list[dict[str, Any]]:
    """``latentguard eval`` rows: bandit's verdict on head + completion (cut to what parses)."""
    texts = [function_end(h["prompt"], c) for h, c in zip(heads, completions, strict=True)]
    whole = [parseable(h["prompt"] + t) for h, t in zip(heads, texts, strict=True)]
    tests = flagged_tests(whole)
    out = []
    for h, text, found in zip(heads, texts, tests, strict=True):
        if found is None:  # nothing parses: bandit cannot judge it, so it has no label
            continue
        out.append({"prompt": h["prompt"], "text": text, "label": int(bool(found)),
                    "group": h["group"], "id": h["id"], "kind": h["kind"],
                    "head_label": h["head_label"], "bandit": found})
    return out


def generate(model: Path, prompts: Sequence[str], max_tokens: int, seed: int) -> list[str]:
    from vllm import LLM, SamplingParams

    llm = LLM(model=str(model), enforce_eager=True, dtype="float32", max_model_len=1024,
              seed=seed)
    outs = llm.generate(list(prompts), SamplingParams(max_tokens=max_tokens, temperature=0.0,
                                                      stop=STOPS), use_tqdm=True)
    texts = [o.outputs[0].text for o in outs]
    llm.llm_engine.engine_core.shutdown()
    return texts


def summarise(rows: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for split, items in rows.items():
        by_head = Counter((r["head_label"], r["label"]) for r in items)
        out[split] = {
            "texts": len(items), "unsafe": sum(r["label"] for r in items),
            "packages": len({r["group"] for r in items}),
            "unsafe_packages": len({r["group"] for r in items if r["label"]}),
            "from_flagged_heads": {"completions": by_head[1, 0] + by_head[1, 1],
                                   "unsafe": by_head[1, 1]},
            "from_clean_heads": {"completions": by_head[0, 0] + by_head[0, 1],
                                 "unsafe": by_head[0, 1]},
            "tests": dict(Counter(t for r in items for t in r["bandit"]).most_common()),
        }
    return out


def table(summary: dict[str, Any]) -> Table:
    t = Table(title="model-written code (bandit on head + completion)")
    for col in ("split", "texts", "unsafe", "packages", "unsafe from flagged heads",
                "unsafe from clean heads"):
        t.add_column(col, justify="left" if col == "split" else "right")
    for split, s in summary.items():
        f, c = s["from_flagged_heads"], s["from_clean_heads"]
        t.add_row(split, str(s["texts"]), str(s["unsafe"]), str(s["packages"]),
                  f"{f['unsafe']}/{f['completions']}", f"{c['unsafe']}/{c['completions']}")
    return t


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True, help="HF model folder")
    p.add_argument("--data", type=Path, required=True, help="the code corpus JSONL")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--per-package", type=int, default=6, help="heads per package and label")
    p.add_argument("--max-tokens", type=int, default=96, help="tokens per completion")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    rows = read_rows(args.data)
    heads = {split: select_heads(rows, split, args.per_package, args.seed)
             for split in ("train", "heldout")}
    for split, hs in heads.items():
        log.info("%s: %d heads (%d flagged functions) from %d packages", split, len(hs),
                 sum(h["head_label"] for h in hs), len({h["group"] for h in hs}))
    order = [(s, i) for s, hs in heads.items() for i in range(len(hs))]
    texts = generate(args.model, [heads[s][i]["prompt"] for s, i in order], args.max_tokens,
                     args.seed)
    completions: dict[str, list[str]] = {s: [""] * len(hs) for s, hs in heads.items()}
    for (s, i), text in zip(order, texts, strict=True):
        completions[s][i] = text
    labelled = {s: label_completions(heads[s], completions[s]) for s in heads}
    args.out.mkdir(parents=True, exist_ok=True)
    for s, items in labelled.items():
        (args.out / f"{s}.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in items), encoding="utf-8")
    summary = summarise(labelled)
    summary["settings"] = {"model": str(args.model), "data": str(args.data),
                           "per_package": args.per_package, "max_tokens": args.max_tokens,
                           "seed": args.seed}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n", "utf-8")
    Console().print(table({s: summary[s] for s in labelled}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
