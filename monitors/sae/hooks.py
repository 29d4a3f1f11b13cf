"""Map hook names of the SAE libraries to a decoder layer index and a site.

``layer`` follows one convention everywhere: the residual stream *after* decoder layer ``layer``
(SAELens ``blocks.L.hook_resid_post``, HF/vLLM output of ``model.layers.L``, sparsify
``layers.L``). ``blocks.L.hook_resid_pre`` is the residual after layer ``L - 1`` (``-1`` means the
embeddings).
"""

from __future__ import annotations

import re
from typing import Literal, NamedTuple

__all__ = ["HookSite", "Site", "parse_hook_name"]

Site = Literal["resid_post", "resid_mid", "mlp_out", "attn_out"]


class HookSite(NamedTuple):
    layer: int
    """Decoder layer index (residual after this layer for ``resid_post``)."""
    site: Site


_TRANSFORMER_LENS = re.compile(r"^blocks\.(\d+)\.(?:attn\.)?hook_(\w+)$")
_TL_SITES: dict[str, Site] = {
    "resid_post": "resid_post",
    "resid_mid": "resid_mid",
    "mlp_out": "mlp_out",
    "attn_out": "attn_out",
    # Not "z": per-head values before the output projection, which no site here is.
}
_MODULE = re.compile(
    r"^(?:model\.)*(?:layers|h|decoder\.layers|transformer\.h|gpt_neox\.layers)\.(\d+)"
    r"(?:\.(mlp|self_attn|attn|attention))?$"
)
_MODULE_SITES: dict[str | None, Site] = {
    None: "resid_post",
    "mlp": "mlp_out",
    "self_attn": "attn_out",
    "attn": "attn_out",
    "attention": "attn_out",
}


def parse_hook_name(name: str) -> HookSite | None:
    """Parse a hook name; None when it is not recognised."""
    name = name.strip()
    if name in ("hook_embed", "embed_tokens", "model.embed_tokens", "embed"):
        return HookSite(-1, "resid_post")
    match = _TRANSFORMER_LENS.match(name)
    if match:
        layer, hook = int(match.group(1)), match.group(2)
        if hook == "resid_pre":
            return HookSite(layer - 1, "resid_post")
        site = _TL_SITES.get(hook)
        return HookSite(layer, site) if site else None
    match = _MODULE.match(name)
    if match:
        return HookSite(int(match.group(1)), _MODULE_SITES[match.group(2)])
    return None
