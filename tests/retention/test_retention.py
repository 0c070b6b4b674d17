"""An ended execution's Redis hash is dropped ``ORQ_STATE_RETENTION_S`` after its ending was projected (never
before), and every command on it still answers from SQL afterwards: retry and DLQ retry rebuild the state."""

from __future__ import annotations

from typing import Any

import httpx
from redis.asyncio import Redis

from shared.domain.aggregates import Status
from shared.domain.executions.commands import cancel_unit
from shared.infra.settings import Settings
from shared.log import keys
from shared.log.commit import Applied, Committer
from tests.api.support import (
    TenantHandle,
    create_workflow,
    execute,
    executor,
    get_execution,
    mark_failed,
    mark_running,
    projector,
)
from tests.helpers import assert_always, assert_eventually
from tests.retention.support import exec_keys, fail_at_second_step

NOOP: dict[str, Any] = {"name": "noop", "steps": [{"action": "noop"}]}
TWO_STEPS: dict[str, Any] = {
    "name": "two",
    "steps": [
        {"action": "set", "params": {"values": {"g": "{{ params.name }}"}}},
        {"action": "set", "params": {"values": {"echo": "{{ steps.0.output.g }}"}}},
    ],
    "retry": {"attempts": 1},
}


async def _gone(redis: Redis, key: str) -> None:
    assert not await redis.exists(key)


async def test_hash_dropped_after_projection_never_before(
    client: httpx.AsyncClient, redis: Redis, settings: Settings, tenant: TenantHandle, committer: Committer
) -> None:
    workflow = await create_workflow(client, tenant, NOOP)
    execution_id = await execute(client, tenant, workflow["id"])
    await mark_running(committer, tenant, execution_id)
    await mark_failed(committer, tenant, execution_id, dead_letter=False)
    key = keys.execution(tenant.partition, execution_id)

    async def kept() -> None:  # ended but not projected: no TTL, still there
        assert await redis.ttl(key) == -1

    await assert_always(kept, duration=settings.state_retention_s + 0.5, message="unprojected state kept")
    async with projector(settings):
        await assert_eventually(lambda: _gone(redis, key), timeout=15, message="state dropped after retention")
        assert (await get_execution(client, tenant, execution_id))["status"] == "failed"  # SQL still answers


async def test_bulk_runs_leave_no_state_behind(
    client: httpx.AsyncClient, redis: Redis, settings: Settings, tenant: TenantHandle, committer: Committer
) -> None:
    workflow = await create_workflow(client, tenant, NOOP)
    ids: list[str] = []
    for _ in range(2):
        r = await client.post(f"/api/workflows/{workflow['id']}/execute/bulk", json={"runs": [{}] * 1000},
                              headers=tenant.headers)
        assert r.status_code == 202, r.text
        ids += r.json()["execution_ids"]
    units = [cancel_unit(p=tenant.partition, tenant_id=tenant.id, execution_id=i, observed=Status.QUEUED, now_ms=0)
             for i in ids]
    assert all(isinstance(o, Applied) for o in await committer.commit_all(units))
    assert await exec_keys(redis) == 2000

    async def drained() -> None:
        assert await exec_keys(redis) <= 20  # "near zero": 1 %

    async with projector(settings):
        await assert_eventually(drained, timeout=60, interval=0.5, message="ended states dropped")
        r = await client.get("/api/executions", params={"status": "cancelled", "limit": 5}, headers=tenant.headers)
        assert len(r.json()["items"]) == 5


async def test_dlq_retry_after_retention_resumes_and_completes(
    client: httpx.AsyncClient, redis: Redis, settings: Settings, tenant: TenantHandle, committer: Committer
) -> None:
    workflow = await create_workflow(client, tenant, TWO_STEPS)
    execution_id = await execute(client, tenant, workflow["id"], params={"name": "ana"}, priority=4)
    await fail_at_second_step(committer, tenant, execution_id, {"g": "ana"})
    key = keys.execution(tenant.partition, execution_id)
    async with projector(settings):
        await assert_eventually(lambda: _gone(redis, key), timeout=15, message="state dropped after retention")
        r = await client.get("/api/dlq", headers=tenant.headers)
        assert [e["id"] for e in r.json()["items"]] == [execution_id]

        r = await client.post(f"/api/dlq/{execution_id}/retry", headers=tenant.headers)
        assert r.status_code == 202, r.text
        assert r.json() == {"execution_id": execution_id, "status": "queued", "priority": 4}
        state = await redis.hgetall(key)
        assert state[b"status"] == b"queued" and state[b"step"] == b"1" and state[b"tenant"] == tenant.id.encode()
        assert state[b"def_key"] == keys.workflow_version(tenant.partition, workflow["id"], 1).encode()
        assert await redis.ttl(key) == -1 and await redis.xlen(keys.dlq(tenant.partition)) == 0
        r = await client.post(f"/api/dlq/{execution_id}/retry", headers=tenant.headers)
        assert r.status_code == 404  # out of the DLQ now

        async with executor(settings):

            async def completed() -> dict[str, Any]:
                detail = await get_execution(client, tenant, execution_id)
                assert detail["status"] == "completed", detail["status"]
                return detail

            detail = await assert_eventually(completed, timeout=20, message="the retried run completes")
    # Resumed at step 1 with step 0's output and the params rebuilt from SQL; step 0 did not run again.
    assert detail["result"] == {"echo": "ana"} and detail["dead_lettered"] is False
    assert [s["status"] for s in detail["steps"]] == ["completed", "completed"]
    r = await client.get("/api/dlq", headers=tenant.headers)
    assert r.json()["items"] == []


async def test_retry_failed_and_cancelled_after_retention(
    client: httpx.AsyncClient, redis: Redis, settings: Settings, tenant: TenantHandle, committer: Committer
) -> None:
    workflow = await create_workflow(client, tenant, NOOP)
    failed = await execute(client, tenant, workflow["id"], params={"n": 1})
    await mark_running(committer, tenant, failed)
    await mark_failed(committer, tenant, failed, dead_letter=False)
    cancelled = await execute(client, tenant, workflow["id"], priority=3, trigger_type="manual")
    r = await client.post(f"/api/executions/{cancelled}/cancel", headers=tenant.headers)
    assert r.status_code == 202, r.text
    keys_ = [keys.execution(tenant.partition, i) for i in (failed, cancelled)]
    async with projector(settings):
        for key in keys_:
            await assert_eventually(lambda k=key: _gone(redis, k), timeout=15, message="state dropped")  # type: ignore[misc]
        # Commands an ended execution refuses still answer 409 with its status (from SQL), unknown ones 404.
        r = await client.post(f"/api/executions/{cancelled}/cancel", headers=tenant.headers)
        assert r.status_code == 409 and "cancelled" in r.text
        r = await client.patch(f"/api/executions/{failed}", json={"priority": 4}, headers=tenant.headers)
        assert r.status_code == 409 and "failed" in r.text
        r = await client.post("/api/executions/" + "0" * 32 + "/retry", headers=tenant.headers)
        assert r.status_code == 404

        for execution_id, priority in ((failed, 5), (cancelled, 3)):
            r = await client.post(f"/api/executions/{execution_id}/retry", headers=tenant.headers)
            assert r.status_code == 202, r.text
            assert r.json()["priority"] == priority
        state = await redis.hgetall(keys_[1])
        assert state[b"trigger_type"] == b"manual" and state[b"status"] == b"queued"
        r = await client.post(f"/api/executions/{cancelled}/retry", headers=tenant.headers)
        assert r.status_code == 409  # queued again: one revival only

        async with executor(settings):

            async def both_completed() -> None:
                for execution_id in (failed, cancelled):
                    assert (await get_execution(client, tenant, execution_id))["status"] == "completed"

            await assert_eventually(both_completed, timeout=20, message="both retried runs complete")


async def test_retry_before_retention_ends_clears_the_ttl(
    client: httpx.AsyncClient, redis: Redis, settings: Settings, tenant: TenantHandle, committer: Committer
) -> None:
    workflow = await create_workflow(client, tenant, NOOP)
    execution_id = await execute(client, tenant, workflow["id"])
    await mark_running(committer, tenant, execution_id)
    await mark_failed(committer, tenant, execution_id, dead_letter=True)
    key = keys.execution(tenant.partition, execution_id)
    async with projector(settings.with_overrides(state_retention_s=60)):

        async def expiring() -> None:
            assert 0 < await redis.ttl(key) <= 60

        await assert_eventually(expiring, timeout=15, message="TTL set once projected")
        r = await client.post(f"/api/dlq/{execution_id}/retry", headers=tenant.headers)
        assert r.status_code == 202, r.text
        assert await redis.ttl(key) == -1  # revived in the same step as the requeue: it lives again
