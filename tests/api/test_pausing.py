"""Tenant administration (plan, pause) and workflow pause/resume through the API."""

from __future__ import annotations

import httpx
from redis.asyncio import Redis

from shared.domain.aggregates import read_tenant
from shared.infra.plans import default_plans
from shared.infra.settings import Settings
from shared.log import keys
from tests.api.conftest import TenantHandle
from tests.api.support import admin_headers, create_tenant, create_workflow, log_lengths, log_types


async def test_plan_change_is_an_event_and_takes_effect(
    client: httpx.AsyncClient, redis: Redis, settings: Settings, tenant: TenantHandle
) -> None:
    r = await client.patch(f"/api/tenants/{tenant.id}", json={"plan": "enterprise"}, headers=admin_headers(settings))
    assert r.status_code == 200, r.text
    assert r.json() == {"id": tenant.id, "name": "acme", "plan": "enterprise", "paused": False}
    assert (await read_tenant(redis, settings.partitions, tenant.id)).plan == "enterprise"  # type: ignore[union-attr]
    assert "tenant.plan_changed" in await log_types(redis, tenant.partition)
    me = (await client.get("/api/tenants/me", headers=tenant.headers)).json()
    assert me["plan"] == "enterprise" and me["limits"]["max_concurrent"] == default_plans()["enterprise"].max_concurrent
    wf = await create_workflow(client, tenant)
    r = await client.post(f"/api/workflows/{wf['id']}/execute", json={"priority": 1}, headers=tenant.headers)
    assert r.status_code == 202, "enterprise bounds apply at once"


async def test_bad_tenant_updates_change_nothing(
    client: httpx.AsyncClient, redis: Redis, settings: Settings, tenant: TenantHandle
) -> None:
    before = await log_lengths(redis, settings)
    admin = admin_headers(settings)
    unknown_plan = await client.patch(f"/api/tenants/{tenant.id}", json={"plan": "platinum"}, headers=admin)
    assert unknown_plan.status_code == 422 and unknown_plan.json()["error"]["field"] == "plan"
    assert (await client.patch("/api/tenants/nope", json={"plan": "pro"}, headers=admin)).status_code == 404
    assert (await client.patch(f"/api/tenants/{tenant.id}", json={"plan": "pro"},
                               headers=tenant.headers)).status_code == 403
    wrong_type = await client.patch(f"/api/tenants/{tenant.id}", json={"paused": "yes"}, headers=admin)
    assert wrong_type.status_code == 422
    assert await log_lengths(redis, settings) == before


async def test_pause_and_resume_a_tenant(
    client: httpx.AsyncClient, redis: Redis, settings: Settings, tenant: TenantHandle
) -> None:
    admin = admin_headers(settings)
    r = await client.patch(f"/api/tenants/{tenant.id}", json={"paused": True}, headers=admin)
    assert r.status_code == 200 and r.json()["paused"] is True
    assert (await client.get("/api/tenants/me", headers=tenant.headers)).json()["paused"] is True
    again = await log_lengths(redis, settings)
    await client.patch(f"/api/tenants/{tenant.id}", json={"paused": True}, headers=admin)
    assert await log_lengths(redis, settings) == again, "pausing a paused tenant appends nothing"
    r = await client.patch(f"/api/tenants/{tenant.id}", json={"paused": False}, headers=admin)
    assert r.json()["paused"] is False
    types = await log_types(redis, tenant.partition)
    assert types.count("tenant.paused") == 1 and types.count("tenant.resumed") == 1


async def test_pause_and_resume_a_workflow(
    client: httpx.AsyncClient, redis: Redis, tenant: TenantHandle, other_tenant: TenantHandle
) -> None:
    wf = await create_workflow(client, tenant)
    r = await client.post(f"/api/workflows/{wf['id']}/pause", headers=tenant.headers)
    assert r.status_code == 200 and r.json() == {"id": wf["id"], "paused": True}
    assert await redis.hget(keys.workflow(tenant.partition, wf["id"]), "paused") == b"1"
    assert (await client.post(f"/api/workflows/{wf['id']}/resume", headers=other_tenant.headers)).status_code == 404
    r = await client.post(f"/api/workflows/{wf['id']}/resume", headers=tenant.headers)
    assert r.json()["paused"] is False
    types = await log_types(redis, tenant.partition)
    assert types.count("workflow.paused") == 1 and types.count("workflow.resumed") == 1


async def test_backlog_full_is_429_and_queues_nothing(
    client: httpx.AsyncClient, redis: Redis, settings: Settings
) -> None:
    trial = await create_tenant(client, settings, plan="trial")
    wf = await create_workflow(client, trial)
    cap = default_plans()["trial"].max_backlog
    await redis.hset(keys.queued(trial.partition), trial.id, cap)  # as if `cap` runs were waiting
    before = await log_lengths(redis, settings)
    r = await client.post(f"/api/workflows/{wf['id']}/execute", headers=trial.headers)
    assert r.status_code == 429, r.text
    assert r.json()["error"]["code"] == "backlog_full" and r.json()["error"]["limit"] == cap
    assert "Retry-After" in r.headers
    assert await log_lengths(redis, settings) == before
