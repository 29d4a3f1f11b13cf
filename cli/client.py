"""gRPC channels and stubs for the CLI: the sidecar's own socket by default."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import grpc

from latentguard import paths
from latentguard.v1 import (
    features_pb2_grpc,
    monitor_pb2_grpc,
    rules_pb2_grpc,
    traces_pb2_grpc,
)

#: The token the CLI sends; the plugin's `token` setting reads the same variable.
TOKEN_VAR = "LATENTGUARD_TOKEN"


def default_target() -> str:
    """LATENTGUARD_LISTEN if set (0.0.0.0 becomes localhost), else the default socket."""
    listen = os.environ.get("LATENTGUARD_LISTEN", "")
    if listen.startswith("0.0.0.0:"):
        listen = "localhost:" + listen.split(":", 1)[1]
    if listen:
        return listen
    return paths.default_target()


@dataclass
class Client:
    channel: grpc.Channel
    metadata: tuple[tuple[str, str], ...]

    @property
    def rules(self) -> rules_pb2_grpc.RulesStub:
        return rules_pb2_grpc.RulesStub(self.channel)

    @property
    def traces(self) -> traces_pb2_grpc.TracesStub:
        return traces_pb2_grpc.TracesStub(self.channel)

    @property
    def features(self) -> features_pb2_grpc.FeaturesStub:
        return features_pb2_grpc.FeaturesStub(self.channel)

    @property
    def monitor(self) -> monitor_pb2_grpc.MonitorStub:
        return monitor_pb2_grpc.MonitorStub(self.channel)

    def close(self) -> None:
        self.channel.close()


def connect(target: str | None = None, *, token: str | None = None, ca_file: str | None = None,
            cert_file: str | None = None, key_file: str | None = None) -> Client:
    target = target or default_target()
    token = token if token is not None else os.environ.get(TOKEN_VAR, "")
    if ca_file or cert_file:
        creds = grpc.ssl_channel_credentials(
            root_certificates=Path(ca_file).read_bytes() if ca_file else None,
            private_key=Path(key_file).read_bytes() if key_file else None,
            certificate_chain=Path(cert_file).read_bytes() if cert_file else None,
        )
        channel = grpc.secure_channel(target, creds)
    else:
        channel = grpc.insecure_channel(target)
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    return Client(channel=channel, metadata=metadata)
