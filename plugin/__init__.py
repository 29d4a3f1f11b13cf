"""The latentguard vLLM plugin: capture the residual stream, ask the sidecar, apply verdicts.

vLLM loads `register` from the `vllm.general_plugins` entry point in each of its processes.
It installs nothing but a one-shot global forward pre-hook: the first module forward in the
worker finds the model runner, attaches the capture to the model and removes itself.
Blocking also needs the logits processor: start vLLM with
`--logits-processors latentguard.plugin.logits:LatentguardLogitsProcessor` (the
`latentguard vllm` launcher adds it), and for OpenAI clients to see a block as
`finish_reason: "content_filter"`, the middleware (`--middleware
latentguard.plugin.middleware.ContentFilterMiddleware`; the launcher adds it too). The capture
is a custom op, so eager and compiled mode both work (see `_tap`).
"""

from __future__ import annotations

import logging
import os

__all__ = ["register"]

log = logging.getLogger(__name__)

#: Set to 1 to load the plugin without doing anything.
LATENTGUARD_DISABLE = "LATENTGUARD_DISABLE"

#: The plugin monitors only when one of these is set (`latentguard vllm` sets them).
ACTIVATE = ("LATENTGUARD_SIDECAR", "LATENTGUARD_SAE_PATH")

_registered = False


def register() -> None:
    """vLLM's general-plugin entry point: safe to call more than once, in any process."""
    global _registered
    if _registered or os.environ.get(LATENTGUARD_DISABLE, "") not in ("", "0"):
        return
    _registered = True
    if not any(os.environ.get(v) for v in ACTIVATE):
        # Installed but not configured: a plain vLLM run stays plain.
        log.debug("latentguard plugin inactive: set one of %s to monitor", ", ".join(ACTIVATE))
        return
    from latentguard.plugin._attach import arm

    arm()
