"""Workflows: saved as events (each save a new immutable version), read from the SQL projection."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.api import responses, views
from services.api.auth import require_tenant
from services.api.bodies import read_json
from services.api.context import context
from services.api.definitions import build_definition
from services.api.ownership import owned_row, owned_workflow
from services.api.pagination import live_page, page_request
from services.api.schemas import WorkflowIn, WorkflowPage
from shared.domain.aggregates import TenantState, WorkflowState, encode_definition
from shared.domain.executions import subworkflows
from shared.domain.executions.admission import WORKFLOW_CHANGED_GUARD, WORKFLOW_GONE_GUARD
from shared.domain.executions.commands import workflow_delete_unit
from shared.infra.clock import new_id, now_ms
from shared.infra.errors import Conflict, NotFound
from shared.infra.optimistic import MOVED, Moved, optimistically
from shared.log import keys
from shared.log.commit import Applied, Refused, Unit
from shared.log.events import WorkflowSaved
from shared.log.redis import text
from shared.log.workflows import WorkflowDef
from shared.readmodel.schema import workflows


def _save_unit(
    tenant: TenantState, workflow_id: str, definition: WorkflowDef, previous: WorkflowState | None, ts: int
) -> Unit:
    p = tenant.partition
    wf_key = keys.workflow(p, workflow_id)
    version = previous.version + 1 if previous else 1
    unit = Unit(p)
    if previous is None:
        unit.require_absent(wf_key, "workflow_exists")
    else:
        unit.require(wf_key, "deleted", ["0"], WORKFLOW_GONE_GUARD)
        unit.require(wf_key, "version", [str(previous.version)], WORKFLOW_CHANGED_GUARD)
    unit.event(
        WorkflowSaved(tenant_id=tenant.id, aggregate_id=workflow_id, ts=ts, version=version, definition=definition)
    )
    fields: dict[str, str | int] = {
        "tenant": tenant.id,
        "name": definition.name,
        "version": version,
        "deleted": "0",
        "updated_at": ts,
    }
    if previous is None:
        fields["created_at"] = ts
    unit.hset(wf_key, fields)
    unit.set(keys.workflow_version(p, workflow_id, version), encode_definition(definition))
    return unit


async def create_workflow(request: Request) -> Response:
    tenant = await require_tenant(request)
    ctx = context(request)
    definition = build_definition(await read_json(request, WorkflowIn), ctx.action_types,
                                  allow_private=ctx.settings.allow_private_networks)
    workflow_id = new_id()
    await subworkflows.check_calls(ctx.redis, ctx.definitions, p=tenant.partition, tenant_id=tenant.id,
                                   workflow_id=workflow_id, definition=definition)
    ts = now_ms()
    outcome = await ctx.committer.commit(_save_unit(tenant, workflow_id, definition, None, ts))
    if not isinstance(outcome, Applied):
        raise Conflict("workflow id collision, try again")
    return responses.json(views.workflow(workflow_id, 1, definition, ts, ts), 201)


async def update_workflow(request: Request) -> Response:
    tenant = await require_tenant(request)
    ctx = context(request)
    workflow_id = request.path_params["id"]
    await owned_workflow(ctx, tenant, workflow_id)
    definition = build_definition(await read_json(request, WorkflowIn), ctx.action_types,
                                  allow_private=ctx.settings.allow_private_networks)
    await subworkflows.check_calls(ctx.redis, ctx.definitions, p=tenant.partition, tenant_id=tenant.id,
                                   workflow_id=workflow_id, definition=definition)

    # A PUT replaces the whole definition, so losing a race to another save is decided again (last writer wins).
    async def attempt() -> Response | Moved:
        previous = await owned_workflow(ctx, tenant, workflow_id)
        ts = now_ms()
        outcome = await ctx.committer.commit(_save_unit(tenant, workflow_id, definition, previous, ts))
        if isinstance(outcome, Applied):
            created = text(await ctx.redis.hget(keys.workflow(tenant.partition, workflow_id), "created_at"))
            created_at = int(created) if created.isdigit() else None
            return responses.json(views.workflow(workflow_id, previous.version + 1, definition, created_at, ts))
        if isinstance(outcome, Refused) and outcome.label == WORKFLOW_GONE_GUARD:
            raise NotFound(f"workflow {workflow_id} not found")
        return MOVED

    return await optimistically(attempt, exhausted=Conflict("workflow is being changed concurrently, try again"))


async def delete_workflow(request: Request) -> Response:
    tenant = await require_tenant(request)
    ctx = context(request)
    workflow_id = request.path_params["id"]
    await owned_workflow(ctx, tenant, workflow_id)
    unit = workflow_delete_unit(p=tenant.partition, tenant_id=tenant.id, workflow_id=workflow_id, now_ms=now_ms())
    if not isinstance(await ctx.committer.commit(unit), Applied):
        raise NotFound(f"workflow {workflow_id} not found")
    return responses.no_content()


async def get_workflow(request: Request) -> Response:
    tenant = await require_tenant(request)
    ctx = context(request)
    row = await owned_row(ctx.engine, workflows, "workflow", request.path_params["id"], tenant)
    return responses.json(views.workflow_row(row))


async def list_workflows(request: Request) -> Response:
    tenant = await require_tenant(request)
    ctx = context(request)
    items, cursor = await live_page(ctx.engine, workflows, tenant.id, page_request(request))
    return responses.json(WorkflowPage(items=[views.workflow_row(r) for r in items], next_cursor=cursor))


routes = [
    Route("/api/workflows", create_workflow, methods=["POST"]),
    Route("/api/workflows", list_workflows, methods=["GET"]),
    Route("/api/workflows/{id}", get_workflow, methods=["GET"]),
    Route("/api/workflows/{id}", update_workflow, methods=["PUT"]),
    Route("/api/workflows/{id}", delete_workflow, methods=["DELETE"]),
]
