"""The offline tools' user-facing errors: each message names the input and what is wrong."""

from __future__ import annotations

__all__ = ["ActivationError", "DiscoveryError", "LabError", "TrainingError"]


class LabError(Exception):
    """An offline tool cannot go on; the CLI prints the message as is."""


class ActivationError(LabError):
    """The model or its input cannot give activations."""


class TrainingError(LabError):
    """Bad training settings, missing files, a checkpoint that does not fit."""


class DiscoveryError(LabError):
    """Missing texts, a model or SAE that does not load or fit."""
