"""The robot task protocol (DESIGN §10) on the real API, executor and Redis: a robot here is an HTTP client
calling the routes as any robot would (``orq robot`` itself is tested in tests/robots/)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from shared.infra.plans import Plan, default_plans
from shared.infra.settings import Settings
from shared.log import keys
from tests.api.support import (
    TenantHandle,
    create_tenant,
    create_workflow,
    execute,
    execution_state,
    executor,
    log_lengths,
    log_types,
    state_reaches,
)
from tests.helpers import REDIS_URL

ROBOT_STEP: dict[str, Any] = {"action": "set", "runs_on": "desk", "params": {"values": {"invoice": "{{ params.n }}"}}}
AFTER_ROBOT: dict[str, Any] = {"action": "set", "params": {"values": {"seen": "{{ steps.0.output.total }}"}}}


@pytest.fixture
def database_url(sqlite_url: str) -> str:
    return sqlite_url  # the protocol lives in Redis: one database kind is enough here


@pytest.fixture
def settings(database_url: str) -> Settings:
    plans: dict[str, Plan] = {**default_plans(), "tiny": Plan(name="tiny", monthly_quota=0, rate_per_minute=10_000,
                                                              max_concurrent=2, default_priority=5, min_priority=1)}
    return Settings(redis_url=REDIS_URL, database_url=database_url, admin_token="test-admin-" + uuid.uuid4().hex,
                    partitions=4, executor_concurrency=5, lease_s=30.0, robot_lease_s=1.0, max_crashes=5,
                    plans=plans)


class RobotClient:
    def __init__(self, client: httpx.AsyncClient, robot: dict[str, Any]) -> None:
        self.client = client
        self.id = robot["id"]
        self.headers = {"Authorization": f"Bearer {robot['robot_key']}"}

    async def next(self, wait_s: float = 5.0) -> httpx.Response:
        return await self.client.post("/api/robots/tasks/next", json={"wait_s": wait_s}, headers=self.headers)

    async def take(self, wait_s: float = 5.0) -> dict[str, Any]:
        r = await self.next(wait_s)
        assert r.status_code == 200, r.text
        task: dict[str, Any] = r.json()
        return task

    async def call(self, task_id: str, what: str, body: dict[str, Any] | None = None) -> httpx.Response:
        return await self.client.post(f"/api/robots/tasks/{task_id}/{what}", json=body or {}, headers=self.headers)


async def register(client: httpx.AsyncClient, tenant: TenantHandle, name: str, pool: str = "desk") -> RobotClient:
    r = await client.post("/api/robots", json={"name": name, "pool": pool}, headers=tenant.headers)
    assert r.status_code == 201, r.text
    return RobotClient(client, r.json())


@pytest.fixture
async def running(settings: Settings) -> AsyncIterator[None]:
    async with executor(settings):
        yield


async def test_a_robot_step_runs_on_a_robot_and_its_output_feeds_the_next_step(
        client: httpx.AsyncClient, tenant: TenantHandle, redis: Redis, running: None) -> None:
    workflow = await create_workflow(client, tenant, {"name": "invoices", "steps": [ROBOT_STEP, AFTER_ROBOT]})
    robot = await register(client, tenant, "desk-1")
    execution_id = await execute(client, tenant, workflow["id"], params={"n": "INV-7"})
    parked = await state_reaches(redis, tenant, execution_id, "parked", "robot")
    assert "owner" not in parked, "a parked execution holds no executor slot"
    task = await robot.take()
    assert task["execution_id"] == execution_id and task["step_index"] == 0 and task["action"] == "set"
    assert task["params"] == {"values": {"invoice": "INV-7"}}, "templates are rendered before the robot gets them"
    assert task["attempt"] == 1 and task["lease_s"] == 1.0
    r = await robot.call(task["task_id"], "heartbeat", {"progress": 50, "message": "half way"})
    assert r.status_code == 200 and r.json() == {"lease_s": 1.0}
    r = await robot.call(task["task_id"], "logs", {"lines": [{"level": "info", "message": "typed the invoice"}]})
    assert r.status_code == 204, r.text
    r = await robot.call(task["task_id"], "complete", {"output": {"total": 99}})
    assert r.status_code == 200, r.text
    assert r.json()["step_status"] == "completed"
    done = await state_reaches(redis, tenant, execution_id, "status", "completed")
    assert "task" not in done and "parked" not in done
    types = await log_types(redis, tenant.partition)
    for expected in ("step.offered", "step.claimed", "execution.progress", "execution.log", "step.completed",
                     "execution.completed"):
        assert expected in types
    again = await robot.call(task["task_id"], "complete", {"output": {"total": 1}})
    assert again.status_code == 409 and again.json()["error"]["code"] == "lease_lost"


async def test_waiting_for_robots_holds_no_slot(client: httpx.AsyncClient, settings: Settings, redis: Redis,
                                                running: None) -> None:
    tenant = await create_tenant(client, settings, plan="tiny", name="tiny")  # 2 executions at once
    robot_flow = await create_workflow(client, tenant, {"name": "robot", "steps": [ROBOT_STEP]})
    plain = await create_workflow(client, tenant, {"name": "plain", "steps": [{"action": "noop"}]})
    waiting = [await execute(client, tenant, robot_flow["id"], params={"n": i}) for i in range(10)]
    for execution_id in waiting:
        await state_reaches(redis, tenant, execution_id, "parked", "robot")
    ran = await execute(client, tenant, plain["id"])
    await state_reaches(redis, tenant, ran, "status", "completed")
    assert int(await redis.hget(keys.running(tenant.partition), tenant.id) or 0) == 0
    assert await redis.zcard(keys.offers(tenant.partition, tenant.id, "desk")) == 10


async def test_a_silent_robots_task_goes_to_another_robot(client: httpx.AsyncClient, tenant: TenantHandle,
                                                          redis: Redis, running: None) -> None:
    workflow = await create_workflow(client, tenant, {"name": "one", "steps": [ROBOT_STEP]})
    silent, other = await register(client, tenant, "silent"), await register(client, tenant, "other")
    execution_id = await execute(client, tenant, workflow["id"], params={"n": 1})
    first = await silent.take()
    second = await other.take(wait_s=10)  # offered again once the 1 s lease ran out
    assert second["execution_id"] == execution_id and second["task_id"] != first["task_id"]
    late = await silent.call(first["task_id"], "heartbeat")
    assert late.status_code == 409 and late.json()["error"]["code"] == "lease_lost"
    before = await log_lengths(redis, client_settings(client))
    refused = await silent.call(first["task_id"], "complete", {"output": {"total": 1}})
    assert refused.status_code == 409
    assert await log_lengths(redis, client_settings(client)) == before, "a stale call changes nothing"
    assert (await other.call(second["task_id"], "complete", {"output": {"total": 2}})).status_code == 200
    done = await state_reaches(redis, tenant, execution_id, "status", "completed")
    assert done["crash_count"] == "1"
    assert "execution.recovered" in await log_types(redis, tenant.partition)


async def test_a_failing_robot_step_is_retried_then_dead_lettered(client: httpx.AsyncClient, tenant: TenantHandle,
                                                                  redis: Redis, running: None) -> None:
    body = {"name": "flaky", "steps": [ROBOT_STEP], "retry": {"attempts": 2, "backoff": {"type": "fixed",
                                                                                        "delay_ms": 10}}}
    workflow = await create_workflow(client, tenant, body)
    robot = await register(client, tenant, "r")
    execution_id = await execute(client, tenant, workflow["id"], params={"n": 1})
    first = await robot.take()
    r = await robot.call(first["task_id"], "fail", {"message": "screen not found"})
    assert r.status_code == 200 and r.json()["execution_status"] == "retrying"
    second = await robot.take(wait_s=10)
    assert second["attempt"] == 2
    r = await robot.call(second["task_id"], "fail", {"message": "screen not found", "kind": "business"})
    assert r.json()["execution_status"] == "failed"
    dead = await execution_state(redis, tenant, execution_id)
    assert dead["dead_lettered"] == "1"
    assert await redis.xlen(keys.dlq(tenant.partition)) == 1
    assert int(await redis.hget(keys.running(tenant.partition), tenant.id) or 0) == 0


async def test_cancel_reaches_the_robot_at_its_next_heartbeat(client: httpx.AsyncClient, tenant: TenantHandle,
                                                              redis: Redis, running: None) -> None:
    workflow = await create_workflow(client, tenant, {"name": "one", "steps": [ROBOT_STEP, AFTER_ROBOT]})
    robot = await register(client, tenant, "r")
    execution_id = await execute(client, tenant, workflow["id"], params={"n": 1})
    task = await robot.take()
    r = await client.post(f"/api/executions/{execution_id}/cancel", headers=tenant.headers)
    assert r.status_code in (200, 202), r.text
    beat = await robot.call(task["task_id"], "heartbeat")
    assert beat.status_code == 409 and beat.json()["error"]["code"] == "cancelled"
    late = await robot.call(task["task_id"], "complete", {"output": {"total": 5}})
    assert late.status_code == 409 and late.json()["error"]["code"] == "cancelled"
    final = await execution_state(redis, tenant, execution_id)
    assert final["status"] == "cancelled" and "out:0" not in final
    assert await redis.zcard(keys.task_leases(tenant.partition)) == 0
    assert not await redis.exists(keys.task(tenant.partition, task["task_id"]))


async def test_a_queued_offer_is_withdrawn_by_cancel(client: httpx.AsyncClient, tenant: TenantHandle, redis: Redis,
                                                     running: None) -> None:
    workflow = await create_workflow(client, tenant, {"name": "one", "steps": [ROBOT_STEP]})
    robot = await register(client, tenant, "r")
    execution_id = await execute(client, tenant, workflow["id"], params={"n": 1})
    await state_reaches(redis, tenant, execution_id, "parked", "robot")
    await client.post(f"/api/executions/{execution_id}/cancel", headers=tenant.headers)
    assert (await robot.next(wait_s=0)).status_code == 204


async def test_long_poll_answers_at_once_when_a_task_is_offered(client: httpx.AsyncClient, tenant: TenantHandle,
                                                                redis: Redis, running: None) -> None:
    workflow = await create_workflow(client, tenant, {"name": "one", "steps": [ROBOT_STEP]})
    robot = await register(client, tenant, "r")
    started = time.monotonic()
    assert (await robot.next(wait_s=0.3)).status_code == 204
    assert time.monotonic() - started >= 0.3
    poll = asyncio.create_task(robot.next(wait_s=25))
    await asyncio.sleep(0.2)
    execution_id = await execute(client, tenant, workflow["id"], params={"n": 1})
    answer = await asyncio.wait_for(poll, 20)  # well before the 25 s the poll would otherwise wait
    assert answer.status_code == 200 and answer.json()["execution_id"] == execution_id


async def test_long_polls_answer_204_when_the_api_stops(client: httpx.AsyncClient, tenant: TenantHandle,
                                                         redis: Redis, running: None) -> None:
    robot = await register(client, tenant, "r")
    poll = asyncio.create_task(robot.next(wait_s=25))
    await asyncio.sleep(0.3)
    client_settings_app(client).state.api.offers.shut()  # what `orq api` does on SIGTERM, before its grace
    answer = await asyncio.wait_for(poll, 10)
    assert answer.status_code == 204
    assert (await robot.next(wait_s=5)).status_code == 204, "a stopping API does not hold long polls open"


async def test_robot_keys_reach_only_their_pool_and_tenant(client: httpx.AsyncClient, tenant: TenantHandle,
                                                           other_tenant: TenantHandle, redis: Redis,
                                                           running: None) -> None:
    workflow = await create_workflow(client, tenant, {"name": "one", "steps": [ROBOT_STEP]})
    elsewhere = await register(client, tenant, "elsewhere", pool="warehouse")
    foreign = await register(client, other_tenant, "foreign")
    mine = await register(client, tenant, "mine")
    execution_id = await execute(client, tenant, workflow["id"], params={"n": 1})
    await state_reaches(redis, tenant, execution_id, "parked", "robot")
    assert (await elsewhere.next(wait_s=0)).status_code == 204
    assert (await foreign.next(wait_s=0)).status_code == 204
    tenant_key = await client.post("/api/robots/tasks/next", json={}, headers=tenant.headers)
    assert tenant_key.status_code in (401, 403)
    task = await mine.take()
    assert (await foreign.call(task["task_id"], "complete", {})).status_code == 404
    assert (await elsewhere.call(task["task_id"], "heartbeat")).status_code == 404
    assert (await mine.call("nope.00000000", "heartbeat")).status_code == 404
    r = await client.get("/api/workflows", headers=mine.headers)
    assert r.status_code in (401, 403), "a robot key opens no tenant route"
    r = await client.delete(f"/api/robots/{mine.id}", headers=tenant.headers)
    assert r.status_code == 204
    assert (await mine.call(task["task_id"], "heartbeat")).status_code == 401, "a deleted robot's key is dead"


async def test_bad_bodies_are_refused_and_change_nothing(client: httpx.AsyncClient, tenant: TenantHandle,
                                                         redis: Redis, running: None) -> None:
    workflow = await create_workflow(client, tenant, {"name": "one", "steps": [ROBOT_STEP]})
    robot = await register(client, tenant, "r")
    await execute(client, tenant, workflow["id"], params={"n": 1})
    assert (await robot.next(wait_s=31)).status_code == 422
    task = await robot.take()
    before = await log_lengths(redis, client_settings(client))
    assert (await robot.call(task["task_id"], "fail", {})).status_code == 422
    assert (await robot.call(task["task_id"], "heartbeat", {"progress": 101})).status_code == 422
    assert (await robot.call(task["task_id"], "logs", {"lines": []})).status_code == 422
    assert await log_lengths(redis, client_settings(client)) == before


async def test_runs_on_is_checked_when_a_workflow_is_saved(client: httpx.AsyncClient, tenant: TenantHandle) -> None:
    bad_pool = {"name": "x", "steps": [{"action": "noop", "runs_on": "no spaces"}]}
    assert (await client.post("/api/workflows", json=bad_pool, headers=tenant.headers)).status_code == 422
    robot_workflow = {"name": "x", "steps": [{"action": "workflow", "runs_on": "desk",
                                              "params": {"workflow_id": "w"}}]}
    r = await client.post("/api/workflows", json=robot_workflow, headers=tenant.headers)
    assert r.status_code == 422 and "runs_on" in r.text
    # An action only the robots know (a plug-in installed where they run) is accepted for a runs_on step.
    plugin = {"name": "x", "steps": [{"action": "sap_login", "runs_on": "desk", "params": {"user": "{{ params.u }}"}}]}
    assert (await client.post("/api/workflows", json=plugin, headers=tenant.headers)).status_code == 201


def client_settings_app(client: httpx.AsyncClient) -> Any:
    return client._transport.app  # type: ignore[attr-defined]


def client_settings(client: httpx.AsyncClient) -> Settings:
    settings: Settings = client_settings_app(client).state.api.settings
    return settings


async def test_an_output_number_beyond_64_bits_is_refused_and_changes_nothing(
        client: httpx.AsyncClient, tenant: TenantHandle, redis: Redis, running: None) -> None:
    """JSON allows any integer; the log stores 64 bits. The robot gets a 422 naming the field, not a 500, and the
    task stays its own to complete properly."""
    workflow = await create_workflow(client, tenant, {"name": "invoices", "steps": [ROBOT_STEP]})
    robot = await register(client, tenant, "desk-1")
    execution_id = await execute(client, tenant, workflow["id"], params={"n": "INV-8"})
    task = await robot.take()
    before = await log_lengths(redis, client_settings(client))
    r = await robot.call(task["task_id"], "complete", {"output": {"total": 2**70}})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == "output.total"
    assert await log_lengths(redis, client_settings(client)) == before
    r = await robot.call(task["task_id"], "complete", {"output": {"total": 2**62}})
    assert r.status_code == 200, r.text
    await state_reaches(redis, tenant, execution_id, "status", "completed")
