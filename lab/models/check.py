"""Checks that a fetched model folder works: greedy tokens with transformers, and with vLLM.

`python -m latentguard.lab.models.check DIR [--vllm]` prints the completions and timings as
JSON (vLLM starts worker processes with spawn, hence the module entry point).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PROMPT = "def add(a, b):"


def generate_hf(folder: Path, prompt: str = PROMPT, max_new_tokens: int = 8) -> dict[str, Any]:
    """Loads the folder with transformers (fp32) and decodes greedily."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.monotonic()
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    load_s = time.monotonic() - t0
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    t0 = time.monotonic()
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
    gen_s = time.monotonic() - t0
    new = out[0, ids.shape[1]:]
    return {"engine": "transformers", "prompt": prompt,
            "completion": tokenizer.decode(new, skip_special_tokens=True),
            "prompt_tokens": int(ids.shape[1]), "new_tokens": int(new.numel()),
            "load_s": round(load_s, 2), "generate_s": round(gen_s, 2),
            "tok_per_s": round(new.numel() / gen_s, 1) if gen_s > 0 else None}


def generate_vllm(folder: Path, prompts: list[str], max_tokens: int = 16) -> dict[str, Any]:
    """Serves the folder once with vLLM offline (eager, fp32) and decodes greedily.

    Call from under `if __name__ == "__main__":`: vLLM's workers start with spawn.
    """
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    # The installed latentguard vLLM plugin would want a sidecar and an SAE: not this check's job.
    os.environ.setdefault("LATENTGUARD_DISABLE", "1")
    from vllm import LLM, SamplingParams

    t0 = time.monotonic()
    llm = LLM(model=str(folder), enforce_eager=True, dtype="float32", max_model_len=512)
    ready_s = time.monotonic() - t0
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    t0 = time.monotonic()
    outputs = llm.generate(prompts, params)
    gen_s = time.monotonic() - t0
    n = sum(len(o.outputs[0].token_ids) for o in outputs)
    return {"engine": "vllm", "completions": [o.outputs[0].text for o in outputs],
            "ready_s": round(ready_s, 1), "generate_s": round(gen_s, 2), "new_tokens": n,
            "tok_per_s": round(n / gen_s, 1) if gen_s > 0 else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--prompt", default=PROMPT)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--vllm", action="store_true", help="also serve it once with vLLM")
    parser.add_argument("--batch", type=int, default=1, help="vLLM: prompts in one batch")
    parser.add_argument("--out", type=Path, help="also write the JSON report here (vLLM logs "
                        "to stdout too)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    result = [generate_hf(args.folder, args.prompt, args.max_tokens)]
    if args.vllm:
        result.append(generate_vllm(args.folder, [args.prompt] * args.batch, args.max_tokens))
    text = json.dumps(result, indent=2)
    if args.out is not None:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
