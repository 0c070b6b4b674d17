"""The dead-letter queue: executions that exhausted their attempts (or crashed executors too often)."""

from __future__ import annotations

from sqlalchemy import func, select, true
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.api import responses, views
from services.api.auth import require_tenant
from services.api.commands import purge, retry
from services.api.context import context
from services.api.pagination import keyset_page, page_request
from services.api.schemas import DlqPage
from shared.readmodel.schema import executions


async def list_dlq(request: Request) -> Response:
    tenant = await require_tenant(request)
    ctx = context(request)
    page = page_request(request)
    c = executions.c
    dead_at = func.coalesce(c.dead_lettered_at, c.queued_at).label("sort_key")
    query = select(executions, dead_at).where(c.tenant_id == tenant.id, c.in_dlq == true())
    items, cursor = await keyset_page(ctx.engine, query, page, dead_at, c.id)
    return responses.json(DlqPage(items=[views.dlq_entry(r) for r in items], next_cursor=cursor))


async def retry_dlq(request: Request) -> Response:
    tenant = await require_tenant(request)
    accepted = await retry(context(request), tenant, request.path_params["execution_id"], from_dlq=True)
    return responses.json(accepted, 202)


async def purge_dlq(request: Request) -> Response:
    tenant = await require_tenant(request)
    await purge(context(request), tenant, request.path_params["execution_id"])
    return responses.no_content()


routes = [
    Route("/api/dlq", list_dlq, methods=["GET"]),
    Route("/api/dlq/{execution_id}/retry", retry_dlq, methods=["POST"]),
    Route("/api/dlq/{execution_id}", purge_dlq, methods=["DELETE"]),
]
