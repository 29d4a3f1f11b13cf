"""The `latentguard` command."""

from latentguard.server.cli.main import main

__all__ = ["main"]
