"""Tenants: created by the admin in one unit (event + state), then each sees only itself."""

from __future__ import annotations

import hashlib

import httpx
from redis.asyncio import Redis

from shared.domain.aggregates import read_tenant
from shared.infra.settings import Settings
from shared.log import keys
from tests.api.support import TenantHandle, admin_headers, log_lengths, log_types


async def test_create_tenant_appends_event_and_sets_state(
    client: httpx.AsyncClient, redis: Redis, settings: Settings
) -> None:
    r = await client.post("/api/tenants", json={"name": "Acme", "plan": "trial"}, headers=admin_headers(settings))

    assert r.status_code == 201
    body = r.json()
    assert set(body) == {"id", "name", "plan", "api_key"}
    assert body["name"] == "Acme" and body["plan"] == "trial"
    assert body["api_key"].startswith(f"orq_{body['id']}_")
    state = await read_tenant(redis, settings.partitions, body["id"])
    assert state is not None and state.name == "Acme" and state.plan == "trial" and not state.paused
    assert state.key_hash == hashlib.sha256(body["api_key"].encode()).hexdigest()
    p = keys.partition_of(body["id"], settings.partitions)
    assert await log_types(redis, p) == ["tenant.created"]
    assert await redis.sismember(keys.tenant_index(), body["id"])
    # the plain key is stored nowhere
    for key in await redis.keys("*"):
        if await redis.type(key) == b"hash":
            assert body["api_key"].encode() not in (await redis.hgetall(key)).values()


async def test_me_shows_plan_limits_and_usage(client: httpx.AsyncClient, tenant: TenantHandle) -> None:
    r = await client.get("/api/tenants/me", headers=tenant.headers)

    assert r.status_code == 200
    body = r.json()
    assert body["id"] == tenant.id and body["name"] == "acme" and body["plan"] == "pro"
    assert body["limits"] == {
        "monthly_quota": 10_000,
        "rate_per_minute": 100,
        "max_concurrent": 10,
        "default_priority": 5,
        "min_priority": 3,
        "max_backlog": 100_000,
    }
    assert body["queued"] == 0 and body["running"] == 0 and body["paused"] is False
    assert body["usage"]["executions"] == 0
    assert body["usage"]["quota"] == 10_000 and body["usage"]["remaining"] == 10_000
    assert len(body["usage"]["month"]) == 6


async def test_unknown_plan_is_422_and_appends_nothing(
    client: httpx.AsyncClient, redis: Redis, settings: Settings
) -> None:
    before = await log_lengths(redis, settings)
    r = await client.post("/api/tenants", json={"name": "x", "plan": "platinum"}, headers=admin_headers(settings))

    assert r.status_code == 422
    assert r.json()["error"]["code"] == "validation_failed"
    assert r.json()["error"]["field"] == "plan"
    assert await log_lengths(redis, settings) == before


async def test_tenant_body_is_validated(client: httpx.AsyncClient, redis: Redis, settings: Settings) -> None:
    before = await log_lengths(redis, settings)
    cases = [
        ({"plan": "pro"}, "name"),
        ({"name": "", "plan": "pro"}, "name"),
        ({"name": 5, "plan": "pro"}, "name"),
        ({"name": "a", "plan": "pro", "extra": 1}, "extra"),
    ]
    for body, field in cases:
        r = await client.post("/api/tenants", json=body, headers=admin_headers(settings))
        assert r.status_code == 422, body
        assert r.json()["error"]["field"] == field, body
    assert await log_lengths(redis, settings) == before


async def test_admin_token_is_not_a_tenant(client: httpx.AsyncClient, settings: Settings) -> None:
    r = await client.get("/api/tenants/me", headers=admin_headers(settings))
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "forbidden"


async def test_tenant_key_cannot_create_tenants(
    client: httpx.AsyncClient, redis: Redis, settings: Settings, tenant: TenantHandle
) -> None:
    before = await log_lengths(redis, settings)
    r = await client.post("/api/tenants", json={"name": "x", "plan": "pro"}, headers=tenant.headers)
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "forbidden"
    assert await log_lengths(redis, settings) == before


async def test_tenant_creation_needs_a_valid_token(client: httpx.AsyncClient, redis: Redis, settings: Settings) -> None:
    before = await log_lengths(redis, settings)
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": f"Basic {settings.admin_token}"}):
        r = await client.post("/api/tenants", json={"name": "x", "plan": "pro"}, headers=headers)
        assert r.status_code == 401, headers
        assert r.json()["error"]["code"] == "unauthorized"
    assert await log_lengths(redis, settings) == before
