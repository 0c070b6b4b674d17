"""Liveness (the process answers) and readiness (Redis and SQL answer too)."""

from __future__ import annotations

import asyncio

from sqlalchemy import text
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.api import responses
from services.api.context import ApiContext, context
from services.api.schemas import Check, Health, Readiness

CHECK_TIMEOUT_S = 2.0


async def healthz(request: Request) -> Response:
    return responses.json(Health(status="ok"))


async def _check_redis(ctx: ApiContext) -> Check:
    try:
        await asyncio.wait_for(ctx.redis.ping(), CHECK_TIMEOUT_S)
    except Exception as exc:  # any failure means "not ready"; the reason goes to the operator
        return Check(ok=False, error=f"{type(exc).__name__}: {exc}")
    return Check(ok=True)


async def _check_sql(ctx: ApiContext) -> Check:
    async def select_one() -> None:
        async with ctx.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    try:
        await asyncio.wait_for(select_one(), CHECK_TIMEOUT_S)
    except Exception as exc:  # any failure means "not ready"; the reason goes to the operator
        return Check(ok=False, error=f"{type(exc).__name__}: {exc}")
    return Check(ok=True)


async def readyz(request: Request) -> Response:
    ctx = context(request)
    redis_check, sql_check = await asyncio.gather(_check_redis(ctx), _check_sql(ctx))
    ready = redis_check.ok and sql_check.ok
    body = Readiness(status="ok" if ready else "unavailable", checks={"redis": redis_check, "sql": sql_check})
    return responses.json(body, 200 if ready else 503)


routes = [
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
]
