"""The `latentguard` command (entry point: `latentguard.server.cli.main:main`)."""
