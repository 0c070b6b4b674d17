"""Pausing, resuming and re-planning: tenant administration (admin) and workflow pause (tenant).

Each is an event plus the aggregate state the dispatcher reads, in one unit; effective at the next
dispatch. Pausing never drops work: queued executions wait (a paused workflow's are set aside and put back
in front of their backlogs on resume).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.api import responses
from services.api.auth import require_admin, require_tenant
from services.api.bodies import read_json
from services.api.context import context
from services.api.ownership import MAX_ID_LENGTH, owned_workflow
from services.api.schemas import TenantAdmin, TenantUpdate, WorkflowPause
from shared.domain.aggregates import read_tenant
from shared.domain.executions import ops as execution_ops
from shared.domain.executions.commands import workflow_pause_unit
from shared.infra.clock import now_ms
from shared.infra.errors import Conflict, NotFound, ValidationFailed
from shared.log import keys
from shared.log.commit import Applied, Unit
from shared.log.events import TenantPaused, TenantPlanChanged, TenantResumed


async def update_tenant(request: Request) -> Response:
    """``PATCH /api/tenants/{id}`` (admin): change the plan and/or pause or resume the tenant."""
    await require_admin(request)
    ctx = context(request)
    tenant_id = request.path_params["id"]
    tenant = None
    if len(tenant_id) <= MAX_ID_LENGTH:
        tenant = await read_tenant(ctx.redis, ctx.settings.partitions, tenant_id)
    if tenant is None:
        raise NotFound(f"tenant {tenant_id} not found")
    body = await read_json(request, TenantUpdate)
    if body.plan is not None and body.plan not in ctx.settings.plans:
        raise ValidationFailed(f"plan: unknown plan {body.plan!r}", field="plan", known=sorted(ctx.settings.plans))
    p, ts = tenant.partition, now_ms()
    tenant_key = keys.tenant(p, tenant.id)
    unit = Unit(p).require_exists(tenant_key, "tenant")
    plan, paused = tenant.plan, tenant.paused
    if body.plan is not None and body.plan != tenant.plan:
        unit.event(TenantPlanChanged(tenant_id=tenant.id, aggregate_id=tenant.id, ts=ts, plan=body.plan))
        unit.hset(tenant_key, {"plan": body.plan})
        plan = body.plan
    if body.paused is not None and body.paused != tenant.paused:
        event = (TenantPaused if body.paused else TenantResumed)(tenant_id=tenant.id, aggregate_id=tenant.id, ts=ts)
        unit.event(event).hset(tenant_key, {"paused": "1" if body.paused else "0"})
        paused = body.paused
    if unit.ops:
        execution_ops.wake(unit, p, tenant.id)  # new limits or a resume may let waiting work run now
        if not isinstance(await ctx.committer.commit(unit), Applied):
            raise Conflict("the tenant changed meanwhile, try again")
    return responses.json(TenantAdmin(id=tenant.id, name=tenant.name, plan=plan, paused=paused))


async def _set_workflow_paused(request: Request, paused: bool) -> Response:
    tenant = await require_tenant(request)
    ctx = context(request)
    workflow = await owned_workflow(ctx, tenant, request.path_params["id"])
    p, ts = tenant.partition, now_ms()
    current = await ctx.redis.hget(keys.workflow(p, workflow.id), "paused")
    if (current == b"1") != paused:
        unit = workflow_pause_unit(p=p, tenant_id=tenant.id, workflow_id=workflow.id, paused=paused, now_ms=ts)
        if not isinstance(await ctx.committer.commit(unit), Applied):
            raise NotFound(f"workflow {workflow.id} not found")
    return responses.json(WorkflowPause(id=workflow.id, paused=paused))


async def pause_workflow(request: Request) -> Response:
    """``POST /api/workflows/{id}/pause``: its queued executions wait until it is resumed."""
    return await _set_workflow_paused(request, True)


async def resume_workflow(request: Request) -> Response:
    """``POST /api/workflows/{id}/resume``: the waiting executions go back in front of the queue."""
    return await _set_workflow_paused(request, False)


routes = [
    Route("/api/tenants/{id}", update_tenant, methods=["PATCH"]),
    Route("/api/workflows/{id}/pause", pause_workflow, methods=["POST"]),
    Route("/api/workflows/{id}/resume", resume_workflow, methods=["POST"]),
]
