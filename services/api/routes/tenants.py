"""Tenants: created by the admin, each then sees its own plan, limits and usage."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.api import responses
from services.api.auth import key_hash, key_prefix, new_api_key, require_admin, require_tenant
from services.api.bodies import read_json
from services.api.context import context
from services.api.schemas import PlanLimits, Tenant, TenantCreate, TenantProfile, Usage
from shared.infra.clock import month_of, new_id, now_ms
from shared.infra.errors import Conflict, ValidationFailed
from shared.log import keys
from shared.log.commit import Applied, Unit
from shared.log.events import TenantCreated
from shared.log.redis import text


async def create_tenant(request: Request) -> Response:
    await require_admin(request)
    ctx = context(request)
    body = await read_json(request, TenantCreate)
    if body.plan not in ctx.settings.plans:
        raise ValidationFailed(f"plan: unknown plan {body.plan!r}", field="plan", known=sorted(ctx.settings.plans))
    tenant_id = new_id()
    api_key = new_api_key(tenant_id)
    key_id = new_id()
    p = keys.partition_of(tenant_id, ctx.settings.partitions)
    ts = now_ms()
    tenant_key = keys.tenant(p, tenant_id)
    unit = Unit(p).require_absent(tenant_key, "tenant_exists")
    unit.event(
        TenantCreated(
            tenant_id=tenant_id,
            aggregate_id=tenant_id,
            ts=ts,
            name=body.name,
            plan=body.plan,
            api_key_id=key_id,
            api_key_hash=key_hash(api_key),
            api_key_prefix=key_prefix(api_key),
        )
    )
    unit.hset(
        tenant_key,
        {
            "name": body.name,
            "plan": body.plan,
            "key_hash": key_hash(api_key),
            "key_id": key_id,
            "created_at": ts,
            "paused": "0",
        },
    )
    outcome = await ctx.committer.commit(unit)
    if not isinstance(outcome, Applied):  # a fresh random id cannot collide; never act on a hash we did not make
        raise Conflict("tenant id collision, try again")
    # The index spans partitions, so it cannot share the unit's slot; it is an admin convenience only.
    await ctx.redis.sadd(keys.tenant_index(), tenant_id)
    return responses.json(Tenant(id=tenant_id, name=body.name, plan=body.plan, api_key=api_key), 201)


async def me(request: Request) -> Response:
    tenant = await require_tenant(request)
    ctx = context(request)
    plan = ctx.plan(tenant.plan)
    month = month_of(now_ms())
    used = int(text(await ctx.redis.get(keys.usage(tenant.partition, tenant.id, month))) or 0)
    quota = None if plan.unlimited else plan.monthly_quota
    queued = await ctx.redis.hmget(keys.queued(tenant.partition), tenant.id)
    running = await ctx.redis.hmget(keys.running(tenant.partition), tenant.id)
    profile = TenantProfile(
        id=tenant.id,
        name=tenant.name,
        plan=tenant.plan,
        paused=tenant.paused,
        queued=max(0, int(text(queued[0]) or 0)),
        running=max(0, int(text(running[0]) or 0)),
        limits=PlanLimits(
            monthly_quota=plan.monthly_quota,
            rate_per_minute=plan.rate_per_minute,
            max_concurrent=plan.max_concurrent,
            default_priority=plan.default_priority,
            min_priority=plan.min_priority,
            max_backlog=plan.max_backlog,
        ),
        usage=Usage(
            month=month,
            executions=used,
            quota=quota,
            remaining=None if quota is None else max(0, quota - used),
        ),
    )
    return responses.json(profile)


routes = [
    Route("/api/tenants", create_tenant, methods=["POST"]),
    Route("/api/tenants/me", me, methods=["GET"]),
]
