"""The explicit list of SAE architectures, keyed by name."""

from __future__ import annotations

from latentguard.monitors.errors import SAEFormatError
from latentguard.monitors.sae.base import SAE
from latentguard.monitors.sae.gated import GatedSAE
from latentguard.monitors.sae.jumprelu import JumpReLUSAE
from latentguard.monitors.sae.standard import StandardSAE
from latentguard.monitors.sae.topk import TopKSAE

__all__ = ["architecture_class", "architectures", "register_architecture"]

_ARCHITECTURES: dict[str, type[SAE]] = {}


def register_architecture(cls: type[SAE]) -> type[SAE]:
    """Add an architecture; a key registered twice raises ValueError."""
    key = cls.architecture
    if not key:
        raise ValueError(f"{cls.__name__} does not declare an architecture key")
    if key in _ARCHITECTURES:
        raise ValueError(f"SAE architecture {key!r} is already registered")
    _ARCHITECTURES[key] = cls
    return cls


def architectures() -> list[str]:
    """Registered architecture keys, sorted."""
    return sorted(_ARCHITECTURES)


def architecture_class(key: str, source: str = "<config>") -> type[SAE]:
    """The SAE class for ``key``; an unknown key raises SAEFormatError listing the valid ones."""
    try:
        return _ARCHITECTURES[key]
    except KeyError:
        raise SAEFormatError(
            source,
            f"unknown SAE architecture {key!r}; valid: {', '.join(architectures())}",
            key="architecture",
        ) from None


for _cls in (StandardSAE, TopKSAE, JumpReLUSAE, GatedSAE):
    register_architecture(_cls)
