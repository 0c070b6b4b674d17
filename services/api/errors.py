"""The one place where exceptions become HTTP error responses: ``{"error": {"code", "message", ...}}``.

Errors raised on purpose are :class:`shared.infra.errors.OrqError`s and carry their status and code. Starlette's
own (unknown route, wrong method) are reshaped the same way. A store that does not answer (down, or slower
than ``ORQ_SQL_TIMEOUT_S`` for SQL) is a 503 with ``Retry-After``; anything else is a bug and a 500 whose
details stay in the log.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

from redis.exceptions import ClusterError, RedisClusterException, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ExceptionHandler

from services.api import responses
from shared.infra.errors import OrqError, QuotaExceeded
from shared.log.commit import NotReplicated
from shared.readmodel.db import SqlTimeout

log = logging.getLogger(__name__)

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    422: "validation_failed",
    429: "too_many_requests",
}


class Unavailable(OrqError):
    """A store (Redis or SQL) did not answer: the client may try again."""

    status = 503
    code = "unavailable"


class QuotaRefused(QuotaExceeded):
    """Over the monthly quota; tells the client when to come back."""

    def __init__(self, message: str, *, retry_after_s: int, **details: Any) -> None:
        super().__init__(message, **details)
        self.headers = {"Retry-After": str(retry_after_s)}


class BacklogFull(QuotaRefused):
    """Too many executions already waiting for this tenant (its plan's ``max_backlog``)."""

    code = "backlog_full"


def error_body(code: str, message: str, **details: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, **details}}


def error_response(exc: OrqError, headers: Mapping[str, str] | None = None) -> Response:
    return responses.json(exc.to_body(), exc.status, headers)


async def _orq_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, OrqError)
    return error_response(exc, getattr(exc, "headers", None))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "error")
    message = exc.detail if exc.status_code != 404 else f"no route for {request.method} {request.url.path}"
    return responses.json(error_body(code, message), exc.status_code, exc.headers)


async def _unavailable(request: Request, exc: Exception) -> Response:
    log.warning("store unavailable on %s %s: %s", request.method, request.url.path, exc)
    return error_response(Unavailable("a backing store is unavailable, try again"), {"Retry-After": "1"})


async def _sql_timeout(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, SqlTimeout)
    log.warning("SQL timed out on %s %s: %s", request.method, request.url.path, exc)
    retry_after = str(max(1, math.ceil(exc.timeout_s)))
    return error_response(Unavailable(f"{exc}; try again"), {"Retry-After": retry_after})


async def _internal(request: Request, exc: Exception) -> Response:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return responses.json(error_body("internal", "internal error"), 500)


def exception_handlers() -> dict[Any, ExceptionHandler]:
    """Handlers for ``Starlette(exception_handlers=...)``."""
    return {
        OrqError: _orq_error,
        HTTPException: _http_error,
        RedisConnectionError: _unavailable,
        RedisTimeoutError: _unavailable,
        # A Redis Cluster between masters (failover, slot migration) or a write short of its replicas.
        ClusterError: _unavailable,
        TryAgainError: _unavailable,
        RedisClusterException: _unavailable,
        NotReplicated: _unavailable,
        OperationalError: _unavailable,
        InterfaceError: _unavailable,
        PoolTimeoutError: _unavailable,
        SqlTimeout: _sql_timeout,
        Exception: _internal,
    }
