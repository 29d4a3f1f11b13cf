"""Offline work, apart from the sidecar: model fetch, activations from HF models, SAE training,
feature discovery and the tiny test model."""
