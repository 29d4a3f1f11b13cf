"""The `latentguard` command (entry point: `latentguard.cli.main:main`)."""
