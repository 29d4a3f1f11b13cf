"""Sparse autoencoders: architectures, on-disk formats, fast batched encoding."""

from latentguard.monitors.sae.base import SAE, MonitorEncoding
from latentguard.monitors.sae.config import SAEConfig
from latentguard.monitors.sae.formats import SAEFormat, detect_format, format_names, get_format
from latentguard.monitors.sae.formats.saelens import save_saelens
from latentguard.monitors.sae.gated import GatedSAE
from latentguard.monitors.sae.hooks import HookSite, parse_hook_name
from latentguard.monitors.sae.identity import SAEIdentity, weights_sha256
from latentguard.monitors.sae.jumprelu import JumpReLUSAE
from latentguard.monitors.sae.loading import load_sae
from latentguard.monitors.sae.registry import (
    architecture_class,
    architectures,
    register_architecture,
)
from latentguard.monitors.sae.standard import StandardSAE
from latentguard.monitors.sae.topk import TopKSAE

__all__ = [
    "SAE",
    "GatedSAE",
    "HookSite",
    "JumpReLUSAE",
    "MonitorEncoding",
    "SAEConfig",
    "SAEFormat",
    "SAEIdentity",
    "StandardSAE",
    "TopKSAE",
    "architecture_class",
    "architectures",
    "detect_format",
    "format_names",
    "get_format",
    "load_sae",
    "parse_hook_name",
    "register_architecture",
    "save_saelens",
    "weights_sha256",
]
