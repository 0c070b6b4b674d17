"""Trigger CRUD through the API: shapes, per-type validation (422 naming the field), ownership, projection."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.infra.settings import Settings
from shared.log import keys
from shared.readmodel.schema import workflow_triggers
from tests.api.support import TenantHandle, create_workflow, execution_state, log_lengths, projector
from tests.helpers import assert_eventually


async def create_trigger(client: httpx.AsyncClient, tenant: TenantHandle, body: dict[str, Any]) -> dict[str, Any]:
    r = await client.post("/api/triggers", json=body, headers=tenant.headers)
    assert r.status_code == 201, r.text
    result: dict[str, Any] = r.json()
    return result


async def refused(client: httpx.AsyncClient, tenant: TenantHandle, body: dict[str, Any], redis: Redis,
                  settings: Settings, status: int = 422) -> dict[str, Any]:
    """POST must be refused with ``status`` and append nothing."""
    before = await log_lengths(redis, settings)
    r = await client.post("/api/triggers", json=body, headers=tenant.headers)
    assert r.status_code == status, r.text
    assert await log_lengths(redis, settings) == before
    error: dict[str, Any] = r.json()["error"]
    return error


async def test_create_schedule_trigger_and_list_it(
    client: httpx.AsyncClient, tenant: TenantHandle, settings: Settings
) -> None:
    wf = await create_workflow(client, tenant)
    body = await create_trigger(client, tenant, {
        "workflow_id": wf["id"], "trigger_type": "schedule",
        "config": {"cron": "0 9 * * 1-5", "timezone": "Europe/Madrid"},
    })
    assert body["workflow_id"] == wf["id"] and body["trigger_type"] == "schedule"
    assert body["enabled"] is True and body["trigger_count"] == 0 and body["last_triggered_at"] is None
    assert body["config"] == {"cron": "0 9 * * 1-5", "timezone": "Europe/Madrid", "catch_up": "one",
                              "overlap": "skip", "params": {}, "priority": None}
    assert body["webhook_url"] is None
    async with projector(settings):
        async def listed() -> list[dict[str, Any]]:
            r = await client.get("/api/triggers", headers=tenant.headers)
            assert r.status_code == 200
            items: list[dict[str, Any]] = r.json()["items"]
            assert [t["id"] for t in items] == [body["id"]]
            return items

        items = await assert_eventually(listed)
    assert items[0] == body
    r = await client.get(f"/api/triggers/{body['id']}", headers=tenant.headers)
    assert r.status_code == 200 and r.json() == body


async def test_webhook_trigger_has_a_url_and_a_long_token(client: httpx.AsyncClient, tenant: TenantHandle) -> None:
    wf = await create_workflow(client, tenant)
    body = await create_trigger(client, tenant, {"workflow_id": wf["id"], "trigger_type": "webhook"})
    token = body["config"]["token"]
    assert len(token) * 4 >= 128, "at least 128 bits"
    assert body["webhook_url"] == f"http://orq.test/api/triggers/webhook/{token}"
    other = await create_trigger(client, tenant, {"workflow_id": wf["id"], "trigger_type": "webhook"})
    assert other["config"]["token"] != token


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"cron": "not a cron"}, "config.cron"),
        ({"cron": "*/0 * * * *"}, "config.cron"),
        ({"cron": "0 0 31 2 *"}, "config.cron"),  # never fires
        ({"cron": "* * * * * * 2020"}, "config.cron"),  # only in the past
        ({"cron": "0 9 * * *", "timezone": "Mars/Olympus"}, "config.timezone"),
        ({"cron": "0 9 * * *", "catch_up": "some"}, "config.catch_up"),
        ({"timezone": "UTC"}, "config.cron"),
        ({"cron": "0 9 * * *", "unknown": 1}, "config.unknown"),
        ({"cron": "0 9 * * *", "priority": 1}, "config.priority"),  # pro plan: 3 at best
    ],
)
async def test_bad_schedule_config_is_a_422_naming_the_field(
    client: httpx.AsyncClient, tenant: TenantHandle, redis: Redis, settings: Settings, config: dict[str, Any],
    field: str,
) -> None:
    wf = await create_workflow(client, tenant)
    error = await refused(client, tenant, {"workflow_id": wf["id"], "trigger_type": "schedule", "config": config},
                          redis, settings)
    assert error["code"] == "validation_failed" and error["field"] == field, error


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"folder": "/data/in", "glob": "[abc"}, "config.glob"),
        ({"folder": "/data/in", "glob": "sub/*.csv"}, "config.glob"),
        ({"folder": "relative/in"}, "config.folder"),
        ({"glob": "*.csv"}, "config.folder"),
    ],
)
async def test_bad_file_watcher_config(
    client: httpx.AsyncClient, tenant: TenantHandle, redis: Redis, settings: Settings, config: dict[str, Any],
    field: str,
) -> None:
    wf = await create_workflow(client, tenant)
    error = await refused(client, tenant, {"workflow_id": wf["id"], "trigger_type": "file_watcher",
                                           "config": config}, redis, settings)
    assert error["field"] == field, error


async def test_missing_workflow_and_unknown_type(
    client: httpx.AsyncClient, tenant: TenantHandle, redis: Redis, settings: Settings
) -> None:
    error = await refused(client, tenant, {"workflow_id": "f" * 32, "trigger_type": "manual"}, redis, settings)
    assert error["field"] == "workflow_id"
    wf = await create_workflow(client, tenant)
    error = await refused(client, tenant, {"workflow_id": wf["id"], "trigger_type": "carrier_pigeon"}, redis,
                          settings)
    assert error["field"] == "trigger_type"
    error = await refused(client, tenant, {"workflow_id": wf["id"], "trigger_type": "webhook",
                                           "config": {"token": "a" * 40}}, redis, settings)
    assert error["field"] == "config.token", "tokens are generated, never chosen"
    error = await refused(client, tenant, {"workflow_id": wf["id"], "trigger_type": "workflow_completed",
                                           "config": {"workflow_id": "e" * 32}}, redis, settings)
    assert error["field"] == "config.workflow_id"


async def test_chain_cycles_are_refused(
    client: httpx.AsyncClient, tenant: TenantHandle, redis: Redis, settings: Settings
) -> None:
    a, b, c = [await create_workflow(client, tenant) for _ in range(3)]
    error = await refused(client, tenant, {"workflow_id": a["id"], "trigger_type": "workflow_completed",
                                           "config": {"workflow_id": a["id"]}}, redis, settings)
    assert error["field"] == "config.workflow_id" and error["cycle"] == [a["id"], a["id"]]
    # B starts when A ends; C when B ends; then "A when C ends" closes A → B → C → A.
    await create_trigger(client, tenant, {"workflow_id": b["id"], "trigger_type": "workflow_completed",
                                          "config": {"workflow_id": a["id"]}})
    c_after_b = await create_trigger(client, tenant, {"workflow_id": c["id"], "trigger_type": "workflow_completed",
                                                      "config": {"workflow_id": b["id"], "statuses": ["failed"]}})
    error = await refused(client, tenant, {"workflow_id": a["id"], "trigger_type": "workflow_completed",
                                           "config": {"workflow_id": c["id"]}}, redis, settings)
    assert error["cycle"] == [c["id"], a["id"], b["id"], c["id"]]
    # Without the C-after-B edge there is no cycle any more.
    r = await client.delete(f"/api/triggers/{c_after_b['id']}", headers=tenant.headers)
    assert r.status_code == 204
    await create_trigger(client, tenant, {"workflow_id": a["id"], "trigger_type": "workflow_completed",
                                          "config": {"workflow_id": c["id"]}})


async def test_put_replaces_and_keeps_the_token_delete_hides(
    client: httpx.AsyncClient, tenant: TenantHandle, redis: Redis
) -> None:
    wf = await create_workflow(client, tenant)
    created = await create_trigger(client, tenant, {"workflow_id": wf["id"], "trigger_type": "webhook"})
    tid, token = created["id"], created["config"]["token"]
    r = await client.put(f"/api/triggers/{tid}", headers=tenant.headers, json={
        "workflow_id": wf["id"], "trigger_type": "webhook", "enabled": False, "config": {"secret": "s" * 20}})
    assert r.status_code == 200, r.text
    assert r.json()["enabled"] is False and r.json()["config"]["token"] == token
    assert r.json()["config"]["secret"] == "s" * 20
    # Sending the current token back (a client PUTs what it GOT) is fine.
    r = await client.put(f"/api/triggers/{tid}", headers=tenant.headers, json={
        "workflow_id": wf["id"], "trigger_type": "webhook", "config": {"token": token}})
    assert r.status_code == 200 and r.json()["enabled"] is True
    state = await redis.hgetall(keys.trigger(tenant.partition, tid))
    assert state[b"rev"] == b"3"
    r = await client.delete(f"/api/triggers/{tid}", headers=tenant.headers)
    assert r.status_code == 204
    for method in ("put", "delete"):
        r = await client.request(method, f"/api/triggers/{tid}", headers=tenant.headers,
                                 json={"workflow_id": wf["id"], "trigger_type": "manual"})
        assert r.status_code == 404, (method, r.text)
    assert await redis.get(keys.trigger_token(tenant.partition, "x")) is None


async def test_another_tenants_trigger_is_a_404(
    client: httpx.AsyncClient, tenant: TenantHandle, other_tenant: TenantHandle, settings: Settings
) -> None:
    wf = await create_workflow(client, tenant)
    mine = await create_trigger(client, tenant, {"workflow_id": wf["id"], "trigger_type": "manual"})
    body = {"workflow_id": wf["id"], "trigger_type": "manual"}
    async with projector(settings):
        async def projected() -> None:
            r = await client.get(f"/api/triggers/{mine['id']}", headers=tenant.headers)
            assert r.status_code == 200

        await assert_eventually(projected)
        for method in ("get", "put", "delete"):
            r = await client.request(method, f"/api/triggers/{mine['id']}", headers=other_tenant.headers,
                                     json=body if method == "put" else None)
            assert r.status_code == 404, (method, r.text)
        r = await client.get("/api/triggers", headers=other_tenant.headers)
        assert r.json() == {"items": [], "next_cursor": None}
    # and the other tenant cannot start a trigger on my workflow either
    r = await client.post("/api/triggers", headers=other_tenant.headers, json=body)
    assert r.status_code == 422 and r.json()["error"]["field"] == "workflow_id"


async def test_list_filters_and_pages(client: httpx.AsyncClient, tenant: TenantHandle, settings: Settings) -> None:
    wf = await create_workflow(client, tenant)
    made = [await create_trigger(client, tenant, {"workflow_id": wf["id"], "trigger_type": kind})
            for kind in ("manual", "api", "webhook")]
    async with projector(settings):
        async def all_three() -> None:
            r = await client.get("/api/triggers?limit=2", headers=tenant.headers)
            assert len(r.json()["items"]) == 2 and r.json()["next_cursor"]

        await assert_eventually(all_three)
        first = (await client.get("/api/triggers?limit=2", headers=tenant.headers)).json()
        second = (await client.get(f"/api/triggers?limit=2&cursor={first['next_cursor']}",
                                   headers=tenant.headers)).json()
        assert {t["id"] for t in first["items"] + second["items"]} == {t["id"] for t in made}
        only = (await client.get("/api/triggers?trigger_type=webhook", headers=tenant.headers)).json()
        assert [t["trigger_type"] for t in only["items"]] == ["webhook"]
        r = await client.get("/api/triggers?trigger_type=nope", headers=tenant.headers)
        assert r.status_code == 422 and r.json()["error"]["field"] == "trigger_type"


async def test_execute_records_manual_or_api(client: httpx.AsyncClient, tenant: TenantHandle, redis: Redis) -> None:
    wf = await create_workflow(client, tenant)
    r = await client.post(f"/api/workflows/{wf['id']}/execute", json={"trigger_type": "manual"},
                          headers=tenant.headers)
    assert r.status_code == 202, r.text
    assert (await execution_state(redis, tenant, r.json()["execution_id"]))["trigger_type"] == "manual"
    r = await client.post(f"/api/workflows/{wf['id']}/execute", headers=tenant.headers)
    assert (await execution_state(redis, tenant, r.json()["execution_id"]))["trigger_type"] == "api"
    r = await client.post(f"/api/workflows/{wf['id']}/execute", json={"trigger_type": "webhook"},
                          headers=tenant.headers)
    assert r.status_code == 422 and r.json()["error"]["field"] == "trigger_type"


async def test_projection_row_matches_redis(
    client: httpx.AsyncClient, tenant: TenantHandle, settings: Settings, engine: AsyncEngine
) -> None:
    wf = await create_workflow(client, tenant)
    created = await create_trigger(client, tenant, {"workflow_id": wf["id"], "trigger_type": "manual"})
    r = await client.delete(f"/api/triggers/{created['id']}", headers=tenant.headers)
    assert r.status_code == 204
    async with projector(settings):
        async def deleted_row() -> dict[str, Any]:
            async with engine.connect() as conn:
                row = (await conn.execute(select(workflow_triggers))).mappings().first()
            assert row is not None and row["deleted"]
            return dict(row)

        row = await assert_eventually(deleted_row)
    assert row["revision"] == 2 and row["trigger_count"] == 0 and row["tenant_id"] == tenant.id
