"""Work queues over HTTP: create, change, delete; names unique per tenant; other tenants see nothing; bad input
is a 4xx that appends nothing."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from shared.infra.settings import Settings
from tests.api.support import TenantHandle, log_lengths, log_types, projector
from tests.helpers import assert_eventually


async def make_queue(client: httpx.AsyncClient, tenant: TenantHandle, **body: Any) -> dict[str, Any]:
    r = await client.post("/api/queues", json={"name": "invoices", **body}, headers=tenant.headers)
    assert r.status_code == 201, r.text
    created: dict[str, Any] = r.json()
    return created


async def test_create_with_defaults(client: httpx.AsyncClient, redis: Redis, tenant: TenantHandle) -> None:
    q = await make_queue(client, tenant, description="AP invoices")

    assert len(q["id"]) == 32
    assert {k: q[k] for k in ("name", "description", "max_retries", "sla_minutes", "abandon_after_minutes",
                              "unique_reference")} == {
        "name": "invoices", "description": "AP invoices", "max_retries": 3, "sla_minutes": 60,
        "abandon_after_minutes": 1440, "unique_reference": False,
    }
    assert q["created_at"].endswith("Z") and q["created_at"] == q["updated_at"]
    assert await log_types(redis, tenant.partition) == ["tenant.created", "queue.created"]


async def test_names_are_unique_per_tenant_regardless_of_case(
    client: httpx.AsyncClient, redis: Redis, settings: Settings, tenant: TenantHandle, other_tenant: TenantHandle
) -> None:
    await make_queue(client, tenant)
    before = await log_lengths(redis, settings)

    r = await client.post("/api/queues", json={"name": "Invoices"}, headers=tenant.headers)

    assert r.status_code == 409, r.text
    assert r.json()["error"]["code"] == "conflict" and r.json()["error"]["field"] == "name"
    assert await log_lengths(redis, settings) == before
    await make_queue(client, other_tenant)  # another tenant may use the name


async def test_put_changes_only_the_fields_given(client: httpx.AsyncClient, tenant: TenantHandle) -> None:
    q = await make_queue(client, tenant, description="old", max_retries=5)

    r = await client.put(f"/api/queues/{q['id']}", json={"sla_minutes": 15, "description": None},
                         headers=tenant.headers)

    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["sla_minutes"], body["description"], body["max_retries"], body["name"]) == (15, None, 5, "invoices")
    assert body["updated_at"] >= body["created_at"]


async def test_put_without_a_change_appends_nothing(
    client: httpx.AsyncClient, redis: Redis, settings: Settings, tenant: TenantHandle
) -> None:
    q = await make_queue(client, tenant)
    before = await log_lengths(redis, settings)

    r = await client.put(f"/api/queues/{q['id']}", json={"max_retries": 3}, headers=tenant.headers)

    assert r.status_code == 200 and r.json()["max_retries"] == 3
    assert await log_lengths(redis, settings) == before


async def test_rename_onto_another_queue_is_a_conflict_and_renames_free_the_old_name(
    client: httpx.AsyncClient, tenant: TenantHandle
) -> None:
    a = await make_queue(client, tenant, name="a")
    await make_queue(client, tenant, name="b")

    assert (await client.put(f"/api/queues/{a['id']}", json={"name": "B"}, headers=tenant.headers)).status_code == 409
    r = await client.put(f"/api/queues/{a['id']}", json={"name": "c"}, headers=tenant.headers)
    assert r.status_code == 200 and r.json()["name"] == "c"
    await make_queue(client, tenant, name="a")  # free again


async def test_delete_frees_the_name_and_hides_the_queue(
    client: httpx.AsyncClient, redis: Redis, tenant: TenantHandle
) -> None:
    q = await make_queue(client, tenant)
    await client.post(f"/api/queues/{q['id']}/items", json={"data": {"n": 1}}, headers=tenant.headers)

    r = await client.delete(f"/api/queues/{q['id']}", headers=tenant.headers)

    assert r.status_code == 204
    for method, path in [("GET", "/stats"), ("POST", "/items/next"), ("DELETE", ""), ("PUT", ""),
                         ("POST", "/items"), ("GET", "/items")]:
        r = await client.request(method, f"/api/queues/{q['id']}{path}", json={"data": {}}, headers=tenant.headers)
        assert r.status_code == 404, (method, path, r.text)
    assert (await log_types(redis, tenant.partition))[-1] == "queue.deleted"
    await make_queue(client, tenant)


async def test_another_tenants_queue_is_not_found(
    client: httpx.AsyncClient, redis: Redis, settings: Settings, tenant: TenantHandle, other_tenant: TenantHandle
) -> None:
    q = await make_queue(client, tenant)
    item = (await client.post(f"/api/queues/{q['id']}/items", json={"data": {}}, headers=tenant.headers)).json()
    before = await log_lengths(redis, settings)
    base = f"/api/queues/{q['id']}"
    requests: list[tuple[str, str, Any]] = [
        ("GET", base, None), ("PUT", base, {"name": "x"}), ("DELETE", base, None), ("GET", f"{base}/stats", None),
        ("POST", f"{base}/items", {"data": {}}), ("GET", f"{base}/items", None),
        ("POST", f"{base}/items/bulk", {"items": [{"data": {}}]}), ("POST", f"{base}/items/next", None),
        ("GET", f"{base}/items/{item['id']}", None), ("PUT", f"{base}/items/{item['id']}", {"status": "completed"}),
    ]
    for method, path, body in requests:
        r = await client.request(method, path, json=body, headers=other_tenant.headers)
        assert r.status_code == 404, (method, path, r.text)
        assert r.json()["error"]["code"] == "not_found"
    assert await log_lengths(redis, settings) == before


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "name"),
        ({"name": ""}, "name"),
        ({"name": "q", "max_retries": -1}, "max_retries"),
        ({"name": "q", "max_retries": 101}, "max_retries"),
        ({"name": "q", "sla_minutes": 0}, "sla_minutes"),
        ({"name": "q", "abandon_after_minutes": "soon"}, "abandon_after_minutes"),
        ({"name": "q", "unique_reference": "yes"}, "unique_reference"),
        ({"name": "q", "colour": "red"}, "colour"),
    ],
)
async def test_bad_queue_bodies_are_422_naming_the_field(
    client: httpx.AsyncClient, redis: Redis, settings: Settings, tenant: TenantHandle, body: dict[str, Any],
    field: str
) -> None:
    before = await log_lengths(redis, settings)

    r = await client.post("/api/queues", json=body, headers=tenant.headers)

    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == field
    assert await log_lengths(redis, settings) == before


async def test_malformed_json_is_400_and_no_key_is_401(client: httpx.AsyncClient, tenant: TenantHandle) -> None:
    r = await client.post("/api/queues", content=b"{nope", headers=tenant.headers)
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_request"
    assert (await client.get("/api/queues")).status_code == 401


async def test_list_and_get_from_the_projection(
    client: httpx.AsyncClient, settings: Settings, tenant: TenantHandle, other_tenant: TenantHandle
) -> None:
    ids = []
    for i in range(3):
        ids.append((await make_queue(client, tenant, name=f"q{i}"))["id"])
        await asyncio.sleep(0.002)  # newest first is by creation time; within one millisecond, by id
    await make_queue(client, other_tenant, name="theirs")
    gone = await make_queue(client, tenant, name="gone")
    await client.delete(f"/api/queues/{gone['id']}", headers=tenant.headers)

    async with projector(settings):

        async def listed() -> None:
            r = await client.get("/api/queues", params={"limit": 2}, headers=tenant.headers)
            assert r.status_code == 200
            first = r.json()
            assert [q["id"] for q in first["items"]] == [ids[2], ids[1]] and first["next_cursor"]
            r = await client.get("/api/queues", params={"limit": 2, "cursor": first["next_cursor"]},
                                 headers=tenant.headers)
            assert [q["id"] for q in r.json()["items"]] == [ids[0]] and r.json()["next_cursor"] is None

        await assert_eventually(listed, timeout=15, message="queues projected")
    r = await client.get(f"/api/queues/{ids[0]}", headers=tenant.headers)
    assert r.status_code == 200 and r.json()["name"] == "q0" and r.json()["max_retries"] == 3
    assert (await client.get(f"/api/queues/{gone['id']}", headers=tenant.headers)).status_code == 404
    assert (await client.get(f"/api/queues/{ids[0]}", headers=other_tenant.headers)).status_code == 404
