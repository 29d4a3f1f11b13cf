"""latentguard: SAE-feature safety monitoring for served LLMs.

`latentguard.v1` holds the generated gRPC API, `latentguard.monitors` the science (SAEs, rules,
steering), `latentguard.server` the sidecar.
"""

__version__ = "0.1.0"
