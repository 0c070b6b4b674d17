"""Executions: queries from the SQL projection; commands (cancel, retry, priority) checked on Redis state."""

from __future__ import annotations

from sqlalchemy import select
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.api import responses, views
from services.api.auth import require_tenant
from services.api.bodies import read_json
from services.api.commands import cancel, change_priority, owned_execution, retry
from services.api.context import context
from services.api.listing import one_of
from services.api.pagination import keyset_page, page_request
from services.api.routes import history
from services.api.schemas import ExecutionPage, PriorityIn
from shared.domain.aggregates import Status
from shared.domain.triggers.definitions import EXECUTION_SOURCES
from shared.infra.errors import NotFound, ValidationFailed
from shared.readmodel.schema import execution_steps, executions

MAX_FILTER_LENGTH = 64


def _filter(request: Request, name: str) -> str | None:
    """A filter's value, None when absent; given but empty is refused (a client bug, not "no filter")."""
    value = request.query_params.get(name)
    if value == "":
        raise ValidationFailed(f"{name}: empty; leave the parameter out to list every execution", field=name)
    return value


async def list_executions(request: Request) -> Response:
    tenant = await require_tenant(request)
    ctx = context(request)
    page = page_request(request)
    c = executions.c
    query = select(executions).where(c.tenant_id == tenant.id)
    status = _filter(request, "status")
    if status is not None:
        query = query.where(c.status == one_of("status", status, tuple(Status)))
    workflow_id = _filter(request, "workflow_id")
    if workflow_id is not None:
        if len(workflow_id) > MAX_FILTER_LENGTH:
            raise ValidationFailed("workflow_id: too long", field="workflow_id")
        query = query.where(c.workflow_id == workflow_id)
    trigger_type = _filter(request, "trigger_type")
    if trigger_type is not None:
        query = query.where(c.trigger_type == one_of("trigger_type", trigger_type, EXECUTION_SOURCES))
    items, cursor = await keyset_page(ctx.engine, query, page, c.queued_at, c.id)
    return responses.json(ExecutionPage(items=[views.execution_summary(r) for r in items], next_cursor=cursor))


async def get_execution(request: Request) -> Response:
    as_of = request.query_params.get("as_of")
    if as_of is not None:  # time travel: folded from the events, not read from the projection
        return await history.execution_as_of(request, as_of)
    tenant = await require_tenant(request)
    ctx = context(request)
    execution_id = request.path_params["id"]
    async with ctx.engine.connect() as conn:
        row = (
            await conn.execute(
                select(executions).where(executions.c.id == execution_id, executions.c.tenant_id == tenant.id)
            )
        ).first()
        if row is None:
            raise NotFound(f"execution {execution_id} not found")
        steps = (
            await conn.execute(
                select(execution_steps)
                .where(execution_steps.c.execution_id == execution_id, execution_steps.c.tenant_id == tenant.id)
                .order_by(execution_steps.c.step_index)
            )
        ).all()
    return responses.json(views.execution(row, list(steps)))


async def cancel_execution(request: Request) -> Response:
    tenant = await require_tenant(request)
    return responses.json(await cancel(context(request), tenant, request.path_params["id"]), 202)


async def retry_execution(request: Request) -> Response:
    tenant = await require_tenant(request)
    return responses.json(await retry(context(request), tenant, request.path_params["id"], from_dlq=None), 202)


async def patch_execution(request: Request) -> Response:
    tenant = await require_tenant(request)
    ctx = context(request)
    await owned_execution(ctx, tenant, request.path_params["id"])  # an unknown execution is a 404, whatever the body
    body = await read_json(request, PriorityIn)
    return responses.json(await change_priority(ctx, tenant, request.path_params["id"], body.priority))


routes = [
    Route("/api/executions", list_executions, methods=["GET"]),
    Route("/api/executions/{id}", get_execution, methods=["GET"]),
    Route("/api/executions/{id}", patch_execution, methods=["PATCH"]),
    Route("/api/executions/{id}/cancel", cancel_execution, methods=["POST"]),
    Route("/api/executions/{id}/retry", retry_execution, methods=["POST"]),
]
