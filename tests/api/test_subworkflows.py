"""Sub-workflows (DESIGN §11): the ``workflow`` action, on the real API, executor, trigger service and Redis."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
import pytest
from redis.asyncio import Redis

from shared.infra.plans import Plan, default_plans
from shared.infra.settings import Settings
from shared.log import keys
from shared.log.events import ExecutionQueued, decode
from tests.api.support import (
    TenantHandle,
    create_tenant,
    create_workflow,
    execute,
    execution_state,
    executor,
    state_reaches,
    trigger_service,
)
from tests.helpers import REDIS_URL


@pytest.fixture
def database_url(sqlite_url: str) -> str:
    return sqlite_url  # parking and resuming live in Redis: one database kind is enough here


@pytest.fixture
def settings(database_url: str) -> Settings:
    plans: dict[str, Plan] = {**default_plans(), "single": Plan(name="single", monthly_quota=0, rate_per_minute=10_000,
                                                                max_concurrent=1, default_priority=5, min_priority=1)}
    return Settings(redis_url=REDIS_URL, database_url=database_url, admin_token="test-admin-" + uuid.uuid4().hex,
                    partitions=4, executor_concurrency=5, lease_s=30.0, plans=plans, trigger_poll_s=0.05)


@pytest.fixture
async def running(settings: Settings) -> AsyncIterator[None]:
    async with executor(settings), trigger_service(settings):
        yield


def calls(child_id: str, **params: Any) -> dict[str, Any]:
    return {"action": "workflow", "params": {"workflow_id": child_id, **params}}


async def test_the_childs_result_is_the_parent_steps_output(client: httpx.AsyncClient, tenant: TenantHandle,
                                                           redis: Redis, running: None) -> None:
    child = await create_workflow(client, tenant, {"name": "child", "steps": [
        {"action": "set", "params": {"values": {"doubled": "{{ params.n }}{{ params.n }}"}}}]})
    parent = await create_workflow(client, tenant, {"name": "parent", "steps": [
        calls(child["id"], params={"n": "{{ params.n }}"}),
        {"action": "set", "params": {"values": {"got": "{{ steps.0.output.doubled }}"}}}]})
    parent_id = await execute(client, tenant, parent["id"], params={"n": "4"})
    done = await state_reaches(redis, tenant, parent_id, "status", "completed")
    assert "waits_for" not in done and "parked" not in done
    final = await redis.hget(keys.execution(tenant.partition, parent_id), "out:1")
    assert msgspec.msgpack.decode(final) == {"got": "44"}, "the child's result fed the parent's next step"
    child_id = await _child_of(redis, tenant, parent_id)
    child_state = await execution_state(redis, tenant, child_id)
    assert child_state["status"] == "completed" and child_state["parent"] == parent_id
    assert child_state["trigger_type"] == "workflow" and child_state["depth"] == "1"
    types = [t.decode() for _, e in await redis.xrange(keys.log(tenant.partition)) for k, t in e.items()
             if k == b"t"]
    assert "step.waiting" in types


async def test_without_wait_the_step_returns_the_childs_id(client: httpx.AsyncClient, tenant: TenantHandle,
                                                           redis: Redis, running: None) -> None:
    child = await create_workflow(client, tenant, {"name": "child", "steps": [{"action": "delay",
                                                                               "params": {"ms": 200}}]})
    parent = await create_workflow(client, tenant, {"name": "parent", "steps": [calls(child["id"], wait=False)]})
    parent_id = await execute(client, tenant, parent["id"])
    await state_reaches(redis, tenant, parent_id, "status", "completed")
    child_id = await _child_of(redis, tenant, parent_id)
    await state_reaches(redis, tenant, child_id, "status", "completed")


async def test_a_failed_child_fails_the_parent_step(client: httpx.AsyncClient, tenant: TenantHandle, redis: Redis,
                                                    running: None) -> None:
    child = await create_workflow(client, tenant, {"name": "child", "steps": [
        {"action": "fail", "params": {"message": "no invoice"}}], "retry": {"attempts": 1}})
    parent = await create_workflow(client, tenant, {"name": "parent", "steps": [calls(child["id"])],
                                                    "retry": {"attempts": 1}})
    parent_id = await execute(client, tenant, parent["id"])
    failed = await state_reaches(redis, tenant, parent_id, "status", "failed")
    assert failed["dead_lettered"] == "1"
    entries = await redis.xrange(keys.dlq(tenant.partition))
    errors = {e[b"e"].decode(): e[b"error"].decode() for _, e in entries}
    assert "no invoice" in errors[parent_id] and "child execution" in errors[parent_id]


async def test_cancelling_the_parent_cancels_the_child(client: httpx.AsyncClient, tenant: TenantHandle,
                                                       redis: Redis, running: None) -> None:
    child = await create_workflow(client, tenant, {"name": "child", "steps": [{"action": "delay",
                                                                               "params": {"ms": 20_000}}]})
    parent = await create_workflow(client, tenant, {"name": "parent", "steps": [calls(child["id"])]})
    parent_id = await execute(client, tenant, parent["id"])
    waiting = await state_reaches(redis, tenant, parent_id, "parked", "child")
    child_id = waiting["waits_for"]
    await state_reaches(redis, tenant, child_id, "status", "running")
    r = await client.post(f"/api/executions/{parent_id}/cancel", headers=tenant.headers)
    assert r.status_code in (200, 202), r.text
    await state_reaches(redis, tenant, child_id, "status", "cancelled")


async def test_a_waiting_parent_holds_no_slot(client: httpx.AsyncClient, settings: Settings, redis: Redis,
                                              running: None) -> None:
    tenant = await create_tenant(client, settings, plan="single", name="single")  # one execution at a time
    child = await create_workflow(client, tenant, {"name": "child", "steps": [{"action": "noop"}]})
    parent = await create_workflow(client, tenant, {"name": "parent", "steps": [calls(child["id"])]})
    parent_id = await execute(client, tenant, parent["id"])
    await state_reaches(redis, tenant, parent_id, "status", "completed")  # the child ran while its parent waited


async def test_call_cycles_and_unknown_workflows_are_refused_at_save(client: httpx.AsyncClient,
                                                                    tenant: TenantHandle,
                                                                    other_tenant: TenantHandle) -> None:
    a = await create_workflow(client, tenant, {"name": "a", "steps": [{"action": "noop"}]})
    b = await create_workflow(client, tenant, {"name": "b", "steps": [calls(a["id"])]})
    c = await create_workflow(client, tenant, {"name": "c", "steps": [calls(b["id"])]})
    r = await client.put(f"/api/workflows/{a['id']}", json={"name": "a", "steps": [calls(c["id"])]},
                         headers=tenant.headers)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["field"] == "steps[0].params.workflow_id" and error["cycle"] == [a["id"], c["id"], b["id"], a["id"]]
    r = await client.put(f"/api/workflows/{a['id']}", json={"name": "a", "steps": [calls(a["id"])]},
                         headers=tenant.headers)
    assert r.status_code == 422
    foreign = await create_workflow(client, other_tenant, {"name": "f", "steps": [{"action": "noop"}]})
    r = await client.post("/api/workflows", json={"name": "x", "steps": [calls(foreign["id"])]},
                          headers=tenant.headers)
    assert r.status_code == 422 and "unknown workflow" in r.json()["error"]["message"]
    templated = {"name": "t", "steps": [calls("{{ params.which }}")]}
    assert (await client.post("/api/workflows", json=templated, headers=tenant.headers)).status_code == 201


async def test_depth_is_capped(client: httpx.AsyncClient, tenant: TenantHandle, redis: Redis,
                               running: None) -> None:
    # A templated id hides the cycle from the save-time check: the depth cap stops it at run time.
    loop = await create_workflow(client, tenant, {"name": "loop", "retry": {"attempts": 1}, "steps": [
        calls("{{ params.me }}", params={"me": "{{ params.me }}"})]})
    root = await execute(client, tenant, loop["id"], params={"me": loop["id"]})
    failed = await state_reaches(redis, tenant, root, "status", "failed", timeout=40)
    assert failed["dead_lettered"] == "1"
    errors = [e[b"error"].decode() for _, e in await redis.xrange(keys.dlq(tenant.partition))]
    assert any("depth_exceeded" in error for error in errors)


async def _child_of(redis: Redis, tenant: TenantHandle, parent_id: str) -> str:
    for _, entry in await redis.xrange(keys.log(tenant.partition)):
        if entry[b"t"] == b"execution.queued" and parent_id.encode() in entry[b"d"]:
            event = decode(entry[b"d"])
            if isinstance(event, ExecutionQueued) and event.parent_execution_id == parent_id:
                return event.aggregate_id
    raise AssertionError(f"no child of {parent_id}")
