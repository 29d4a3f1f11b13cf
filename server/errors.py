"""Server errors, and the one place where every error becomes a gRPC status.

`monitors/` raises its own typed errors (bad rules, bad shapes, unknown features); the store
and services raise the ones below. `status_for` maps both to a code and a message that names
the field and the problem, and `grpc_errors` applies it around each RPC handler.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from redis import exceptions as redis_errors

from latentguard.monitors import errors as monitor_errors

log = logging.getLogger(__name__)


QUOTE_CHARS = 64
"""How much of a caller's value an error message quotes: enough to recognise it, and short
enough that a status never outgrows gRPC's metadata limit (which turns it into
RESOURCE_EXHAUSTED)."""


def quoted(value: object, limit: int = QUOTE_CHARS) -> str:
    """``repr`` of a caller's value cut to ``limit`` characters (with "…"), for messages."""
    text = value if isinstance(value, str) else str(value)
    if len(text) > limit:
        return repr(text[:limit]) + "…"
    return repr(text)


def check_length(value: str, field: str, limit: int) -> None:
    """Refuses a text field longer than ``limit`` characters with INVALID_ARGUMENT naming it."""
    if len(value) > limit:
        raise InvalidArgument(f"{field}: {len(value)} characters, at most {limit}", field=field)


class ServerError(Exception):
    code = grpc.StatusCode.INTERNAL

    def __init__(self, message: str, *, field: str = "") -> None:
        super().__init__(message)
        self.field = field


class NotFound(ServerError):
    code = grpc.StatusCode.NOT_FOUND


class VersionConflict(ServerError):
    """A put or delete named an expected version that is not the stored one."""

    code = grpc.StatusCode.ABORTED


class InvalidArgument(ServerError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class PermissionDenied(ServerError):
    """The caller's token may call the RPC, but not with these arguments (a review under
    another reviewer's name)."""

    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(ServerError):
    """A configured limit would be passed (the message names the setting)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(ServerError):
    code = grpc.StatusCode.UNAVAILABLE


class FailedPrecondition(ServerError):
    code = grpc.StatusCode.FAILED_PRECONDITION


#: The store is away or cannot answer for now (a node down, a cluster re-sharding, a failover):
#: the writer keeps records in its spool and retries; an RPC answers UNAVAILABLE.
STORE_UNAVAILABLE: tuple[type[Exception], ...] = (
    redis_errors.ConnectionError, redis_errors.TimeoutError, redis_errors.ClusterError,
    redis_errors.TryAgainError, redis_errors.SlotNotCoveredError,
)


_MONITOR_CODES: dict[type[Exception], grpc.StatusCode] = {
    monitor_errors.RuleValidationError: grpc.StatusCode.INVALID_ARGUMENT,
    monitor_errors.ShapeError: grpc.StatusCode.INVALID_ARGUMENT,
    monitor_errors.UnknownFeatureError: grpc.StatusCode.INVALID_ARGUMENT,
    monitor_errors.SAEFormatError: grpc.StatusCode.FAILED_PRECONDITION,
    monitor_errors.SAEMismatchError: grpc.StatusCode.FAILED_PRECONDITION,
    monitor_errors.NotFoundError: grpc.StatusCode.NOT_FOUND,
}


def status_for(exc: Exception) -> tuple[grpc.StatusCode, str, list[tuple[str, str]]]:
    """(code, message, [(field, problem), ...]) for an exception."""
    if isinstance(exc, ServerError):
        problem = str(exc).removeprefix(f"{exc.field}: ")
        return exc.code, str(exc), [(exc.field, problem)] if exc.field else []
    if isinstance(exc, monitor_errors.RuleValidationError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc), list(exc.errors)
    if isinstance(exc, monitor_errors.ShapeError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc), [(exc.field, exc.problem)]
    if isinstance(exc, monitor_errors.SAEMismatchError):
        violations = [(exc.field, exc.problem)] if exc.field else []
        return grpc.StatusCode.FAILED_PRECONDITION, str(exc), violations
    if isinstance(exc, monitor_errors.UnknownFeatureError) and exc.field:
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc), [(exc.field, exc.problem)]
    for cls, code in _MONITOR_CODES.items():
        if isinstance(exc, cls):
            return code, str(exc), []
    if isinstance(exc, STORE_UNAVAILABLE):
        return (grpc.StatusCode.UNAVAILABLE,
                f"the store is unreachable for now ({type(exc).__name__}); retry", [])
    return grpc.StatusCode.INTERNAL, "internal error (logged by the server)", []


def rich_status(
    code: grpc.StatusCode, message: str, violations: list[tuple[str, str]]
) -> grpc.Status:
    """A status whose details carry google.rpc.BadRequest field violations; message and
    violations are cut to MAX_MESSAGE characters, so no status outgrows gRPC's metadata."""
    message = _cut(message)
    violations = [(_cut(f), _cut(d)) for f, d in violations]
    detail = any_pb2.Any()
    detail.Pack(
        error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                for f, d in violations
            ]
        )
    )
    status = status_pb2.Status(
        code=getattr(code_pb2, code.name), message=message, details=[detail] if violations else []
    )
    return rpc_status.to_status(status)


MAX_MESSAGE = 1000


def _cut(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE] + "…"


async def abort_with(context: grpc.aio.ServicerContext, exc: Exception) -> None:
    code, message, violations = status_for(exc)
    if code == grpc.StatusCode.INTERNAL:
        log.exception("unexpected error in %s", type(exc).__name__, exc_info=exc)
    await context.abort_with_status(rich_status(code, message, violations))


F = TypeVar("F", bound=Callable[..., Any])


def grpc_errors(handler: F) -> F:
    """Turn exceptions raised by a unary or server-streaming handler into gRPC statuses."""
    import inspect

    if inspect.isasyncgenfunction(handler):

        @functools.wraps(handler)
        async def stream_wrapper(self: Any, request: Any, context: Any) -> AsyncIterator[Any]:
            try:
                async for item in handler(self, request, context):
                    yield item
            except (grpc.aio.AbortError, GeneratorExit):
                raise
            except Exception as exc:
                await abort_with(context, exc)

        return stream_wrapper  # type: ignore[return-value]

    @functools.wraps(handler)
    async def unary_wrapper(self: Any, request: Any, context: Any) -> Any:
        try:
            return await handler(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await abort_with(context, exc)
            raise  # unreachable: abort raises

    return unary_wrapper  # type: ignore[return-value]
