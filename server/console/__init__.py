"""The review console: flagged traces, one trace shaded by its signal, reviews, rule stats,
live alerts and features, in a browser, served by the sidecar (`latentguard serve --ui`)."""

from latentguard.server.console._auth import ConsoleAuth
from latentguard.server.console.app import ConsoleDeps, create_app
from latentguard.server.console.server import ConsoleServer

__all__ = ["ConsoleAuth", "ConsoleDeps", "ConsoleServer", "create_app"]
