"""Unary request bodies that are not the message they claim to be answer INVALID_ARGUMENT.

gRPC decodes a unary request before the handler runs, and a decoding error becomes UNKNOWN.
This interceptor swaps each unary handler's decoder for one that turns undecodable bytes into
a marker, and the handler for one that answers the marker with INVALID_ARGUMENT. (The Monitor
stream decodes its own messages: services/monitor.py.)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError


class _Undecodable:
    def __init__(self, error: Exception) -> None:
        self.error = error


def _decoder(decode: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def wrapped(data: bytes) -> Any:
        try:
            return decode(data)
        except (DecodeError, ValueError) as exc:
            return _Undecodable(exc)

    return wrapped


def _unary_unary(behavior: Callable[..., Awaitable[Any]], method: str
                 ) -> Callable[..., Awaitable[Any]]:
    async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, _Undecodable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"the request body is not the message {method} takes")
        return await behavior(request, context)

    return wrapped


def _unary_stream(behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
    async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, _Undecodable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"the request body is not the message {method} takes")
        async for reply in behavior(request, context):
            yield reply

    return wrapped


class DecodeInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or handler.request_streaming or handler.request_deserializer is None:
            return handler
        method = details.method
        decode = _decoder(handler.request_deserializer)
        if handler.unary_unary is not None:
            return handler._replace(request_deserializer=decode,
                                    unary_unary=_unary_unary(handler.unary_unary, method))
        if handler.unary_stream is not None:
            return handler._replace(request_deserializer=decode,
                                    unary_stream=_unary_stream(handler.unary_stream, method))
        return handler
