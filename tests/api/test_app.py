"""The app's edges: health, readiness, the OpenAPI document, the home page, unknown routes and methods."""

from __future__ import annotations

import httpx
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.routing import Route

from services.api.app import all_routes, create_app
from services.api.openapi import OPS
from shared.infra.settings import Settings
from shared.log.redis import connect
from tests.api.support import TenantHandle


async def test_healthz(client: httpx.AsyncClient) -> None:
    r = await client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


async def test_readyz_when_both_stores_answer(client: httpx.AsyncClient) -> None:
    r = await client.get("/readyz")
    assert r.status_code == 200
    assert r.json() == {
        "status": "ok",
        "checks": {"redis": {"ok": True, "error": None}, "sql": {"ok": True, "error": None}},
    }


async def test_readyz_reports_what_is_down(settings: Settings, engine: AsyncEngine) -> None:
    dead_redis = connect("redis://127.0.0.1:1/0")
    app = create_app(settings, dead_redis, engine)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://orq.test") as client:
            r = await client.get("/readyz")
            assert r.status_code == 503
            body = r.json()
            assert body["status"] == "unavailable"
            assert body["checks"]["redis"]["ok"] is False and body["checks"]["redis"]["error"]
            assert body["checks"]["sql"]["ok"] is True
            # a command needing Redis is a 503 with the error shape, not a 500
            r = await client.get("/api/tenants/me", headers={"Authorization": "Bearer orq_abc_" + "x" * 43})
            assert r.status_code == 503 and r.json()["error"]["code"] == "unavailable"
    finally:
        await app.state.api.committer.close()
        await dead_redis.aclose()


async def test_unknown_route_and_wrong_method_are_json(client: httpx.AsyncClient, tenant: TenantHandle) -> None:
    r = await client.get("/api/nothing-here", headers=tenant.headers)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = await client.get("/api/workflows/", headers=tenant.headers)
    assert r.status_code == 404
    r = await client.put("/api/executions", headers=tenant.headers)
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    assert "GET" in r.headers["allow"]


async def test_home_page_is_the_dashboard(client: httpx.AsyncClient) -> None:
    r = await client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert 'id="login"' in r.text and "/static/app.js" in r.text and "/openapi.json" in r.text
    r = await client.get("/static/app.js")
    assert r.status_code == 200 and "javascript" in r.headers["content-type"]
    r = await client.get("/static/nothing.js")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


async def test_openapi_describes_every_route(client: httpx.AsyncClient, settings: Settings) -> None:
    r = await client.get("/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    assert doc["openapi"].startswith("3.1")
    assert doc["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}
    described = {(method.upper(), path) for path, ops in doc["paths"].items() for method in ops}
    served = {
        (method, route.path)
        for route in all_routes()
        if isinstance(route, Route)
        for method in route.methods or ()
        if method != "HEAD"
    }
    assert described == served
    assert len(OPS) == len(served)
    plan = doc["components"]["schemas"]["TenantCreate"]["properties"]["plan"]
    assert plan["enum"] == sorted(settings.plans)
    execute = doc["paths"]["/api/workflows/{id}/execute"]["post"]
    assert {"202", "401", "404", "422", "429"} <= set(execute["responses"])
    assert any(p["name"] == "Idempotency-Key" for p in execute["parameters"])
    assert doc["paths"]["/healthz"]["get"]["security"] == []


async def test_responses_are_json_with_error_shape_for_every_refusal(
    client: httpx.AsyncClient, redis: Redis, tenant: TenantHandle
) -> None:
    r = await client.post("/api/workflows", content=b"{", headers=tenant.headers)
    assert r.headers["content-type"] == "application/json"
    assert set(r.json()) == {"error"} and {"code", "message"} <= set(r.json()["error"])
