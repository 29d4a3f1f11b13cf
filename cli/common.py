"""What every command group shares: exit codes, the user-facing error, the console, and the
connection options and client."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

import grpc
from rich.console import Console

from latentguard.cli.client import Client, connect

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2

# argparse has no public name for the object add_subparsers() returns.
Subparsers = argparse._SubParsersAction


class CliError(Exception):
    """A user-facing failure; the message is printed as is."""


def console() -> Console:
    return Console(width=200) if not sys.stdout.isatty() else Console()


def client_for(args: argparse.Namespace) -> Client:
    return connect(args.target, token=args.token, ca_file=args.ca_file,
                   cert_file=args.cert_file, key_file=args.key_file)


def call(client: Client, method: Callable[..., Any], request: Any, timeout: float = 30) -> Any:
    return method(request, metadata=client.metadata, timeout=timeout)


def describe_rpc_error(exc: grpc.RpcError) -> str:
    from grpc_status import rpc_status

    lines = [f"{exc.code().name}: {exc.details()}"]
    status = rpc_status.from_call(exc)
    if status is not None:
        from google.rpc import error_details_pb2

        for detail in status.details:
            bad = error_details_pb2.BadRequest()
            if detail.Unpack(bad):
                lines += [f"  {v.field}: {v.description}" for v in bad.field_violations]
    return "\n".join(lines)


def add_connection(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("connection")
    g.add_argument("--target", help="unix:///path.sock or host:port (default: "
                   "LATENTGUARD_LISTEN, else the local sidecar's socket)")
    g.add_argument("--token", help="bearer token (default: LATENTGUARD_TOKEN)")
    g.add_argument("--ca-file", help="CA certificate for a TLS sidecar")
    g.add_argument("--cert-file", help="client certificate (mTLS)")
    g.add_argument("--key-file", help="client key (mTLS)")
