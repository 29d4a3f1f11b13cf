"""Bearer tokens with roles, checked by one interceptor for every RPC.

Roles: `reader` reads rules, traces, features and alerts, and may call Inspect and Generate
(they run the served model through the monitor and change nothing stored); `reviewer` also
reviews traces, under its token's name (the Traces service refuses another reviewer name);
`admin` may do everything; `monitor` is the vLLM plugin's role (the Monitor
service only). README's role table says the same.
With no tokens configured, auth is off (the default unix socket is reachable only by the
socket's owner); health checking and reflection never need a token.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc

from latentguard.server.config import TokenEntry

log = logging.getLogger(__name__)

READ = frozenset({"reader", "reviewer", "admin"})
REVIEW = frozenset({"reviewer", "admin"})
ADMIN = frozenset({"admin"})
MONITOR = frozenset({"monitor", "admin"})
GENERATE = frozenset({"monitor", "reader", "reviewer", "admin"})

#: Roles allowed per RPC; an RPC missing here is refused (deny by default).
PERMISSIONS: dict[str, frozenset[str]] = {
    "/latentguard.v1.Rules/ListRules": READ,
    "/latentguard.v1.Rules/GetRule": READ,
    "/latentguard.v1.Rules/ValidateRule": READ,
    "/latentguard.v1.Rules/PutRule": ADMIN,
    "/latentguard.v1.Rules/DeleteRule": ADMIN,
    "/latentguard.v1.Rules/ListPolicies": READ,
    "/latentguard.v1.Rules/GetPolicy": READ,
    "/latentguard.v1.Rules/PutPolicy": ADMIN,
    "/latentguard.v1.Rules/DeletePolicy": ADMIN,
    "/latentguard.v1.Traces/ListTraces": READ,
    "/latentguard.v1.Traces/GetTrace": READ,
    "/latentguard.v1.Traces/ReviewTrace": REVIEW,
    "/latentguard.v1.Traces/StreamAlerts": READ,
    "/latentguard.v1.Traces/AckAlerts": READ,
    "/latentguard.v1.Features/ListFeatures": READ,
    "/latentguard.v1.Features/GetFeature": READ,
    "/latentguard.v1.Features/SearchFeatures": READ,
    "/latentguard.v1.Monitor/Stream": MONITOR,
    "/latentguard.v1.Monitor/Inspect": GENERATE,
    "/latentguard.v1.Monitor/Generate": GENERATE,
}
PUBLIC_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Authenticator:
    def __init__(self, tokens: Sequence[TokenEntry]) -> None:
        self._tokens = list(tokens)

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    def identify(self, metadata: Sequence[tuple[str, Any]] | None) -> TokenEntry | None:
        """The token entry of the `authorization: Bearer ...` header, if it is a known token."""
        for key, value in metadata or ():
            if key.lower() != "authorization":
                continue
            scheme, _, token = str(value).partition(" ")
            if scheme.lower() != "bearer" or not token:
                return None
            digest = hash_token(token.strip())
            for entry in self._tokens:
                if hmac.compare_digest(entry.token_sha256, digest):
                    return entry
        return None

    def caller_name(self, context: grpc.aio.ServicerContext) -> str:
        entry = self.identify(context.invocation_metadata())
        return entry.name if entry else ""


def _refusal(handler: grpc.RpcMethodHandler, code: grpc.StatusCode,
             message: str) -> grpc.RpcMethodHandler:
    async def deny(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, message)

    async def deny_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, message)
        yield  # pragma: no cover - makes this an async generator

    kw = {"request_deserializer": handler.request_deserializer,
          "response_serializer": handler.response_serializer}
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(deny_stream, **kw)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(deny, **kw)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(deny_stream, **kw)
    return grpc.unary_unary_rpc_method_handler(deny, **kw)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, auth: Authenticator) -> None:
        self._auth = auth

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method = details.method
        if handler is None or not self._auth.enabled or method.startswith(PUBLIC_PREFIXES):
            return handler
        entry = self._auth.identify(details.invocation_metadata)
        if entry is None:
            return _refusal(handler, grpc.StatusCode.UNAUTHENTICATED,
                            "missing or unknown bearer token (metadata 'authorization')")
        allowed = PERMISSIONS.get(method, frozenset())
        if entry.role not in allowed:
            log.info("refused %s to %s (role %s)", method, entry.name, entry.role)
            need = " or ".join(sorted(allowed)) or "no role (not exposed)"
            return _refusal(handler, grpc.StatusCode.PERMISSION_DENIED,
                            f"{method} needs role {need}; token {entry.name!r} has {entry.role}")
        return handler
