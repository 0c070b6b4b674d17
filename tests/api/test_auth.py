"""Tenant API keys: a missing or wrong key is a 401 on every tenant route, and nothing is written."""

from __future__ import annotations

import httpx
import pytest
from redis.asyncio import Redis

from shared.infra.settings import Settings
from shared.log import keys
from tests.api.support import TenantHandle, log_lengths

TENANT_ROUTES = [
    ("GET", "/api/tenants/me"),
    ("GET", "/api/workflows"),
    ("POST", "/api/workflows"),
    ("GET", "/api/workflows/abc"),
    ("PUT", "/api/workflows/abc"),
    ("DELETE", "/api/workflows/abc"),
    ("POST", "/api/workflows/abc/execute"),
    ("POST", "/api/workflows/abc/execute/bulk"),
    ("GET", "/api/executions"),
    ("GET", "/api/executions/abc"),
    ("PATCH", "/api/executions/abc"),
    ("POST", "/api/executions/abc/cancel"),
    ("POST", "/api/executions/abc/retry"),
    ("GET", "/api/dlq"),
    ("POST", "/api/dlq/abc/retry"),
    ("DELETE", "/api/dlq/abc"),
]


def _bad_keys(tenant: TenantHandle) -> list[dict[str, str]]:
    secret = tenant.api_key.removeprefix(f"orq_{tenant.id}_")
    return [
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer"},
        {"Authorization": f"Token {tenant.api_key}"},
        {"Authorization": "Bearer orq_nobody_" + "x" * 43},
        {"Authorization": f"Bearer orq_{tenant.id}_{'x' * 43}"},  # right tenant, wrong secret
        {"Authorization": f"Bearer {tenant.api_key}x"},
        {"Authorization": f"Bearer orq_{'0' * 32}_{secret}"},  # right secret, wrong tenant
    ]


@pytest.mark.parametrize(("method", "path"), TENANT_ROUTES)
async def test_missing_or_wrong_key_is_401(
    client: httpx.AsyncClient, redis: Redis, settings: Settings, tenant: TenantHandle, method: str, path: str
) -> None:
    before = await log_lengths(redis, settings)
    for headers in _bad_keys(tenant):
        r = await client.request(method, path, headers=headers, json={})
        assert r.status_code == 401, (headers, r.text)
        assert r.json()["error"]["code"] == "unauthorized"
    assert await log_lengths(redis, settings) == before


async def test_paused_tenant_keeps_its_api(client: httpx.AsyncClient, redis: Redis, tenant: TenantHandle) -> None:
    """Pausing stops dispatch, not the API: the tenant can still read and queue (the work waits)."""
    await redis.hset(keys.tenant(tenant.partition, tenant.id), "paused", "1")
    r = await client.get("/api/tenants/me", headers=tenant.headers)
    assert r.status_code == 200
    assert r.json()["paused"] is True


async def test_bearer_scheme_is_case_insensitive(client: httpx.AsyncClient, tenant: TenantHandle) -> None:
    r = await client.get("/api/tenants/me", headers={"Authorization": f"bearer {tenant.api_key}"})
    assert r.status_code == 200
