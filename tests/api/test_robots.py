"""Robots over HTTP: registration and its key, keys that reach only their own routes, deletion revoking the key at
once, the ``robots`` projection (live and replayed) and the live status of the list."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette

from services.api.app import create_app
from services.projector.replay import replay
from shared.domain.robots.registry import RobotState, robot_status
from shared.infra.settings import Settings
from shared.log import keys
from shared.log.events import decode, type_of
from shared.readmodel.schema import robots
from tests.api.support import TenantHandle, admin_headers, log_lengths, log_types, projector
from tests.helpers import assert_eventually


async def register(client: httpx.AsyncClient, tenant: TenantHandle, name: str = "bot-1",
                   pool: str = "desktop") -> dict[str, Any]:
    r = await client.post("/api/robots", json={"name": name, "pool": pool}, headers=tenant.headers)
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def tenant_event_types(redis: Redis, tenant: TenantHandle) -> list[str]:
    """The types of the tenant's events, in log order (another tenant may share its partition)."""
    events = [decode(fields[b"d"]) for _, fields in await redis.xrange(keys.log(tenant.partition))]
    return [type_of(e) for e in events if e.tenant_id == tenant.id]


async def test_register_shows_the_key_once_and_the_key_works_on_robot_routes(
    client: httpx.AsyncClient, redis: Redis, tenant: TenantHandle
) -> None:
    robot = await register(client, tenant)

    assert set(robot) == {"id", "name", "pool", "robot_key"}
    assert len(robot["id"]) == 32 and (robot["name"], robot["pool"]) == ("bot-1", "desktop")
    assert robot["robot_key"].startswith(f"orqr_{tenant.id}_{robot['id']}_")
    r = await client.get("/api/robots/me", headers=bearer(robot["robot_key"]))
    assert r.status_code == 200, r.text
    assert r.json() == {"id": robot["id"], "name": "bot-1", "pool": "desktop", "tenant_id": tenant.id}
    # Only the key's hash is kept; the event carries a prefix to recognise it by, never the key.
    stored = await redis.hgetall(keys.robot(tenant.partition, robot["id"]))
    assert robot["robot_key"].encode() not in stored.values() and len(stored[b"key_hash"]) == 64
    assert await log_types(redis, tenant.partition) == ["tenant.created", "robot.registered"]
    entry = (await redis.xrange(keys.log(tenant.partition)))[-1][1]
    assert robot["robot_key"].encode() not in entry[b"d"] and stored[b"key_hash"] not in entry[b"d"]


async def test_bad_bodies_are_422_naming_the_field(
    client: httpx.AsyncClient, redis: Redis, settings: Settings, tenant: TenantHandle
) -> None:
    before = await log_lengths(redis, settings)
    cases = [
        ({"name": "", "pool": "p"}, "name"),
        ({"name": "x" * 101, "pool": "p"}, "name"),
        ({"name": "ok", "pool": ""}, "pool"),
        ({"name": "ok", "pool": "has space"}, "pool"),
        ({"name": "ok", "pool": "p" * 65}, "pool"),
        ({"name": "ok"}, "pool"),
        ({"name": "ok", "pool": "p", "extra": 1}, "extra"),
    ]
    for body, field in cases:
        r = await client.post("/api/robots", json=body, headers=tenant.headers)
        assert r.status_code == 422, (body, r.text)
        assert r.json()["error"]["field"] == field, (body, r.text)
    await register(client, tenant, name="x" * 100, pool="A-z_0.9" + "p" * 57)  # the bounds themselves are fine
    assert (await log_lengths(redis, settings))[tenant.partition] == before[tenant.partition] + 1


async def test_names_are_unique_per_tenant_regardless_of_case_even_when_racing(
    client: httpx.AsyncClient, redis: Redis, settings: Settings, tenant: TenantHandle, other_tenant: TenantHandle
) -> None:
    await register(client, tenant, name="Bot-1")
    before = await log_lengths(redis, settings)

    r = await client.post("/api/robots", json={"name": "bot-1", "pool": "other"}, headers=tenant.headers)

    assert r.status_code == 409 and r.json()["error"]["field"] == "name"
    assert await log_lengths(redis, settings) == before
    await register(client, other_tenant, name="bot-1")  # another tenant may use the name
    replies = await asyncio.gather(*(
        client.post("/api/robots", json={"name": "racer", "pool": "p"}, headers=tenant.headers) for _ in range(8)))
    assert sorted(r.status_code for r in replies) == [201] + [409] * 7


async def test_a_robot_key_reaches_no_tenant_or_admin_route_and_changes_nothing(
    client: httpx.AsyncClient, redis: Redis, settings: Settings, tenant: TenantHandle
) -> None:
    key = (await register(client, tenant))["robot_key"]
    before = await log_lengths(redis, settings)

    for method, path, body in [("GET", "/api/workflows", None), ("GET", "/api/robots", None),
                               ("POST", "/api/workflows", {"name": "w", "steps": [{"action": "noop"}]}),
                               ("POST", "/api/robots", {"name": "sneaky", "pool": "p"})]:
        r = await client.request(method, path, json=body, headers=bearer(key))
        assert r.status_code == 403, (path, r.text)
        assert "not a robot key" in r.json()["error"]["message"]
    r = await client.post("/api/tenants", json={"name": "t", "plan": "pro"}, headers=bearer(key))
    assert r.status_code == 403 and "admin token" in r.json()["error"]["message"]
    wrong = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    assert (await client.get("/api/workflows", headers=bearer(wrong))).status_code == 401
    assert await log_lengths(redis, settings) == before


async def test_robot_routes_refuse_tenant_keys_the_admin_token_and_wrong_keys(
    client: httpx.AsyncClient, redis: Redis, settings: Settings, tenant: TenantHandle
) -> None:
    robot = await register(client, tenant)
    robot_key = keys.robot(tenant.partition, robot["id"])

    r = await client.get("/api/robots/me", headers=tenant.headers)
    assert r.status_code == 403 and "robot key" in r.json()["error"]["message"]
    assert (await client.get("/api/robots/me", headers=admin_headers(settings))).status_code == 403
    wrong = robot["robot_key"][:-4] + ("AAAA" if not robot["robot_key"].endswith("AAAA") else "BBBB")
    for token in (wrong, "orq_nope_0123456789abcdef0123", "garbage", f"orqr_{tenant.id}_{'0' * 32}_{'s' * 43}"):
        r = await client.get("/api/robots/me", headers=bearer(token))
        assert r.status_code == 401, (token, r.text)
    assert (await client.get("/api/robots/me")).status_code == 401
    # A wrong key never counts as the robot being seen.
    assert await redis.hget(robot_key, "last_seen") is None
    assert (await client.get("/api/robots/me", headers=bearer(robot["robot_key"]))).status_code == 200
    assert await redis.hget(robot_key, "last_seen") is not None


async def test_delete_revokes_the_key_at_once_and_frees_the_name(
    client: httpx.AsyncClient, redis: Redis, tenant: TenantHandle, other_tenant: TenantHandle
) -> None:
    robot = await register(client, tenant)
    key = bearer(robot["robot_key"])

    assert (await client.delete(f"/api/robots/{robot['id']}", headers=other_tenant.headers)).status_code == 404
    assert (await client.get("/api/robots/me", headers=key)).status_code == 200  # another tenant changed nothing
    r = await client.delete(f"/api/robots/{robot['id']}", headers=tenant.headers)

    assert r.status_code == 204, r.text
    r = await client.get("/api/robots/me", headers=key)
    assert r.status_code == 401 and r.json()["error"]["message"] == "invalid robot key"
    assert not await redis.exists(keys.robot(tenant.partition, robot["id"]))  # the call brought nothing back
    assert (await client.get("/api/workflows", headers=key)).status_code == 401  # nor does a tenant route
    assert (await client.delete(f"/api/robots/{robot['id']}", headers=tenant.headers)).status_code == 404
    assert (await client.delete("/api/robots/" + "x" * 100, headers=tenant.headers)).status_code == 404
    again = await register(client, tenant)  # the name is free again; the new robot has a new key
    assert again["id"] != robot["id"]
    assert await tenant_event_types(redis, tenant) == [
        "tenant.created", "robot.registered", "robot.deleted", "robot.registered"]


async def test_list_and_get_from_the_projection_with_live_status(
    client: httpx.AsyncClient, engine: AsyncEngine, settings: Settings, tenant: TenantHandle,
    other_tenant: TenantHandle
) -> None:
    ids = []
    for i in range(3):
        ids.append((await register(client, tenant, name=f"bot-{i}", pool="a" if i < 2 else "b"))["id"])
        await asyncio.sleep(0.002)  # newest first is by registration time
    theirs = await register(client, other_tenant, name="theirs", pool="a")
    gone = await register(client, tenant, name="gone", pool="a")
    assert (await client.delete(f"/api/robots/{gone['id']}", headers=tenant.headers)).status_code == 204

    async with projector(settings):

        async def listed() -> None:
            r = await client.get("/api/robots", params={"limit": 2}, headers=tenant.headers)
            assert r.status_code == 200, r.text
            first = r.json()
            assert [x["id"] for x in first["items"]] == [ids[2], ids[1]] and first["next_cursor"]
            r = await client.get("/api/robots", params={"limit": 2, "cursor": first["next_cursor"]},
                                 headers=tenant.headers)
            assert [x["id"] for x in r.json()["items"]] == [ids[0]] and r.json()["next_cursor"] is None

        await assert_eventually(listed, timeout=15, message="robots projected")
        r = await client.get("/api/robots", params={"pool": "a"}, headers=tenant.headers)
        assert [x["id"] for x in r.json()["items"]] == [ids[1], ids[0]]
        r = await client.get("/api/robots", params={"pool": "no such!"}, headers=tenant.headers)
        assert r.status_code == 422 and r.json()["error"]["field"] == "pool"

        r = await client.get(f"/api/robots/{ids[0]}", headers=tenant.headers)
        assert r.status_code == 200, r.text
        never_seen = r.json()
        assert {k: never_seen[k] for k in ("id", "name", "pool", "status", "last_seen_at", "current_task")} == {
            "id": ids[0], "name": "bot-0", "pool": "a", "status": "offline", "last_seen_at": None,
            "current_task": None}
        assert never_seen["created_at"].endswith("Z")

        robot_key = (await register(client, tenant, name="seen", pool="a"))["robot_key"]
        seen_id = robot_key.split("_")[2]
        assert (await client.get("/api/robots/me", headers=bearer(robot_key))).status_code == 200

        async def idle() -> None:
            r = await client.get(f"/api/robots/{seen_id}", headers=tenant.headers)
            assert r.status_code == 200
            assert r.json()["status"] == "idle" and r.json()["last_seen_at"].endswith("Z")

        await assert_eventually(idle, timeout=15, message="seen robot projected, idle")

    for robot_id in (gone["id"], theirs["id"], "0" * 32):
        assert (await client.get(f"/api/robots/{robot_id}", headers=tenant.headers)).status_code == 404
    async with engine.connect() as conn:
        row = (await conn.execute(select(robots).where(robots.c.id == gone["id"]))).mappings().one()
    assert row["deleted"] and row["deleted_at"] is not None and (row["name"], row["pool"]) == ("gone", "a")


@pytest.fixture
async def quick_offline_client(settings: Settings, api_redis: Redis, engine: AsyncEngine,
                               ) -> AsyncIterator[httpx.AsyncClient]:
    """An API whose robots count as offline 0.3 s after their last call (``ORQ_ROBOT_OFFLINE_S``)."""
    app: Starlette = create_app(settings.with_overrides(robot_offline_s=0.3), api_redis, engine)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://orq.test") as c:
            yield c
    finally:
        await app.state.api.committer.close()


async def test_a_robot_silent_past_the_offline_setting_is_offline(
    quick_offline_client: httpx.AsyncClient, settings: Settings, tenant: TenantHandle
) -> None:
    client = quick_offline_client
    robot = await register(client, tenant)
    async with projector(settings):

        async def status() -> str:
            r = await client.get(f"/api/robots/{robot['id']}", headers=tenant.headers)
            assert r.status_code == 200, r.text
            value: str = r.json()["status"]
            return value

        assert await assert_eventually(status, timeout=15, message="projected") == "offline"
        assert (await client.get("/api/robots/me", headers=bearer(robot["robot_key"]))).status_code == 200

        async def offline_again() -> None:
            assert await status() == "offline"

        await assert_eventually(offline_again, timeout=10, message="silent robot goes offline")
        r = await client.get("/api/robots", headers=tenant.headers)
        assert r.json()["items"][0]["status"] == "offline" and r.json()["items"][0]["last_seen_at"] is not None


def test_status_from_the_live_fields() -> None:
    robot = RobotState(id="r", tenant_id="t", partition=0, name="n", pool="p", key_hash="h", created_at=0)
    now = 1_000_000

    assert robot_status(robot, now, 60_000) == "offline"  # never seen
    seen = replace(robot, last_seen=now)
    assert robot_status(seen, now, 60_000) == "idle"
    assert robot_status(replace(seen, task="task-1"), now, 60_000) == "busy"
    assert robot_status(replace(seen, last_seen=now - 60_000), now, 60_000) == "idle"  # at the bound, still online
    assert robot_status(replace(seen, last_seen=now - 60_001, task="task-1"), now, 60_000) == "offline"


async def test_replay_rebuilds_the_robots_table(
    client: httpx.AsyncClient, engine: AsyncEngine, settings: Settings, tenant: TenantHandle,
    other_tenant: TenantHandle
) -> None:
    made = [await register(client, t, name=f"r{i}", pool=f"p{i % 2}") for i, t in
            enumerate([tenant, tenant, other_tenant, tenant])]
    assert (await client.delete(f"/api/robots/{made[1]['id']}", headers=tenant.headers)).status_code == 204

    async def rows() -> list[dict[str, Any]]:
        async with engine.connect() as conn:
            return [dict(r) for r in (await conn.execute(select(robots).order_by(robots.c.id))).mappings().all()]

    async with projector(settings):

        async def projected() -> None:
            current = await rows()
            assert len(current) == 4 and sum(bool(r["deleted"]) for r in current) == 1

        await assert_eventually(projected, timeout=15, message="robots projected")
    live = await rows()

    assert await replay(settings, show_progress=False) > 0
    assert await rows() == live
