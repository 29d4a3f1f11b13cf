"""Where latentguard keeps its data, and where the sidecar listens when told nothing.

The sidecar, the CLI, the launcher and the vLLM plugin must agree on the default socket, or a
plain `latentguard serve` and a plain vLLM with the plugin would miss each other. It lives in
the root package, beside nothing heavy, because the plugin runs inside vLLM and must never
import `latentguard.server`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

#: The variable that moves the data dir (the sidecar's `data_dir` setting reads the same one).
DATA_DIR_VAR = "LATENTGUARD_DATA_DIR"
#: File name of the default socket inside the data dir.
SOCKET_NAME = "latentguard.sock"


def default_data_dir(*, env: Mapping[str, str] | None = None) -> Path:
    """`$XDG_DATA_HOME/latentguard` (XDG's default `~/.local/share` when unset)."""
    env = os.environ if env is None else env
    base = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "latentguard"


def cache_dir(*, env: Mapping[str, str] | None = None) -> Path:
    """`$XDG_CACHE_HOME/latentguard` (XDG's default `~/.cache` when unset): fetched models,
    cached activations, downloaded corpora; anything here can be made again."""
    env = os.environ if env is None else env
    return Path(env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")) / "latentguard"


def data_dir(*, env: Mapping[str, str] | None = None) -> Path:
    """`LATENTGUARD_DATA_DIR` when set (and not empty), else the default data dir."""
    env = os.environ if env is None else env
    return Path(env.get(DATA_DIR_VAR) or default_data_dir(env=env))


def socket_target(data_dir: Path) -> str:
    """The gRPC target of the default socket in `data_dir` (`unix:///.../latentguard.sock`)."""
    return f"unix://{data_dir / SOCKET_NAME}"


def default_target(*, env: Mapping[str, str] | None = None) -> str:
    """Where a sidecar started without `LATENTGUARD_LISTEN` listens, for the same environment."""
    return socket_target(data_dir(env=env))
