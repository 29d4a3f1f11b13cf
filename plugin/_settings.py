"""Plugin settings, from `LATENTGUARD_*` variables (the launcher sets them)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator

from latentguard.plugin._affinity import parse_cpus


def _default_target() -> str:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return f"unix://{Path(base) / 'latentguard' / 'latentguard.sock'}"


class PluginSettings(BaseModel):
    target: str = Field(default_factory=_default_target)
    """Sidecar address (LATENTGUARD_SIDECAR): unix:///path.sock or host:port."""
    token: str = ""
    """Bearer token with the `monitor` role (LATENTGUARD_TOKEN)."""
    sae_path: str = ""
    """The SAE the sidecar uses (LATENTGUARD_SAE_PATH): gives the layer, and steering math."""
    layer: int | None = None
    """Decoder layer whose output is captured (LATENTGUARD_LAYER); default: from the SAE."""
    on_failure: Literal["open", "closed"] = "open"
    """For requests whose policy is unknown while the sidecar is unreachable."""
    timeout_ms: int = 500
    """Sync-mode wait when the policy does not say (LATENTGUARD_TIMEOUT_MS)."""
    connect_timeout_s: float = 10.0
    """How long attaching waits for the sidecar before going on without it."""
    cpus: str = "auto"
    """Cores for the plugin's threads (LATENTGUARD_PLUGIN_CPUS): 'auto' = the cores vLLM's
    model threads are not bound to, 'inherit' = wherever they start, or a list like '1,3-4'."""

    @field_validator("cpus")
    @classmethod
    def _cpu_list(cls, value: str) -> str:
        if value not in ("auto", "inherit"):
            parse_cpus(value)  # raises with the expected format
        return value

    @classmethod
    def from_env(cls) -> PluginSettings:
        env = os.environ
        values: dict[str, object] = {}
        for field, var in (("target", "LATENTGUARD_SIDECAR"), ("token", "LATENTGUARD_TOKEN"),
                           ("sae_path", "LATENTGUARD_SAE_PATH"), ("layer", "LATENTGUARD_LAYER"),
                           ("on_failure", "LATENTGUARD_ON_FAILURE"),
                           ("timeout_ms", "LATENTGUARD_TIMEOUT_MS"),
                           ("cpus", "LATENTGUARD_PLUGIN_CPUS")):
            if env.get(var):
                values[field] = env[var]
        return cls.model_validate(values)
