"""Commands on executions and the DLQ: each allowed only from the states that permit it; a refused command
changes nothing and appends nothing."""

from __future__ import annotations

import httpx
import pytest
from redis.asyncio import Redis

from shared.infra.settings import Settings
from shared.log import keys
from shared.log.commit import Committer
from tests.api.support import (
    TenantHandle,
    create_workflow,
    execution_state,
    log_lengths,
    log_types,
    mark_failed,
    mark_running,
    work_lengths,
)


async def _queued(client: httpx.AsyncClient, tenant: TenantHandle, priority: int = 5) -> str:
    wf = await create_workflow(client, tenant)
    r = await client.post(f"/api/workflows/{wf['id']}/execute", json={"priority": priority}, headers=tenant.headers)
    assert r.status_code == 202
    execution_id: str = r.json()["execution_id"]
    return execution_id


async def _assert_refused(
    client: httpx.AsyncClient,
    redis: Redis,
    settings: Settings,
    request: tuple[str, str, dict[str, object] | None],
    tenant: TenantHandle,
    status: int,
    code: str,
) -> httpx.Response:
    before = await log_lengths(redis, settings)
    method, path, body = request
    r = await client.request(method, path, json=body, headers=tenant.headers)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code
    assert await log_lengths(redis, settings) == before
    return r


async def test_cancel_queued_takes_the_work_entry_back(
    client: httpx.AsyncClient, redis: Redis, settings: Settings, tenant: TenantHandle
) -> None:
    eid = await _queued(client, tenant)
    r = await client.post(f"/api/executions/{eid}/cancel", headers=tenant.headers)

    assert r.status_code == 202
    assert r.json() == {"execution_id": eid, "status": "cancelled", "priority": 5}
    state = await execution_state(redis, tenant, eid)
    assert state["status"] == "cancelled" and "work_id" not in state
    assert sum((await work_lengths(redis, tenant.partition)).values()) == 0
    assert (await log_types(redis, tenant.partition))[-1] == "execution.cancelled"

    r = await _assert_refused(
        client, redis, settings, ("POST", f"/api/executions/{eid}/cancel", None), tenant, 409, "conflict"
    )
    assert r.json()["error"]["status"] == "cancelled"


async def test_cancel_running_tells_the_executor(
    client: httpx.AsyncClient, redis: Redis, committer: Committer, tenant: TenantHandle
) -> None:
    eid = await _queued(client, tenant)
    await mark_running(committer, tenant, eid)
    pubsub = redis.pubsub()
    await pubsub.subscribe(keys.cancel_channel(tenant.partition))
    try:
        r = await client.post(f"/api/executions/{eid}/cancel", headers=tenant.headers)
        assert r.status_code == 202
        message = None
        for _ in range(50):
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
            if message:
                break
        assert message is not None and message["data"] == eid.encode()
    finally:
        await pubsub.aclose()
    assert (await execution_state(redis, tenant, eid))["status"] == "cancelled"


async def test_finished_execution_cannot_be_cancelled(
    client: httpx.AsyncClient, redis: Redis, settings: Settings, committer: Committer, tenant: TenantHandle
) -> None:
    eid = await _queued(client, tenant)
    await mark_failed(committer, tenant, eid, dead_letter=False)
    r = await _assert_refused(
        client, redis, settings, ("POST", f"/api/executions/{eid}/cancel", None), tenant, 409, "conflict"
    )
    assert r.json()["error"] == {"code": "conflict", "message": "execution is failed", "status": "failed"}


async def test_priority_moves_a_queued_execution(
    client: httpx.AsyncClient, redis: Redis, settings: Settings, tenant: TenantHandle
) -> None:
    eid = await _queued(client, tenant, priority=5)
    r = await client.patch(f"/api/executions/{eid}", json={"priority": 3}, headers=tenant.headers)

    assert r.status_code == 200, r.text
    assert r.json() == {"execution_id": eid, "status": "queued", "priority": 3}
    work = await work_lengths(redis, tenant.partition)
    assert work[3] == 1 and work[5] == 0
    assert (await execution_state(redis, tenant, eid))["priority"] == "3"
    assert (await log_types(redis, tenant.partition))[-1] == "execution.priority_changed"

    for body, field in (({"priority": 2}, "priority"), ({"priority": 11}, "priority"), ({}, "priority")):
        r = await _assert_refused(
            client, redis, settings, ("PATCH", f"/api/executions/{eid}", body), tenant, 422, "validation_failed"
        )
        assert r.json()["error"]["field"] == field


async def test_priority_of_a_running_execution_is_409(
    client: httpx.AsyncClient, redis: Redis, settings: Settings, committer: Committer, tenant: TenantHandle
) -> None:
    eid = await _queued(client, tenant)
    await mark_running(committer, tenant, eid)
    r = await _assert_refused(
        client, redis, settings, ("PATCH", f"/api/executions/{eid}", {"priority": 4}), tenant, 409, "conflict"
    )
    assert r.json()["error"] == {"code": "conflict", "message": "execution is running", "status": "running"}


async def test_retry_requeues_failed_and_cancelled(
    client: httpx.AsyncClient, redis: Redis, settings: Settings, committer: Committer, tenant: TenantHandle
) -> None:
    failed = await _queued(client, tenant)
    await mark_failed(committer, tenant, failed, dead_letter=False)
    cancelled = await _queued(client, tenant)
    await client.post(f"/api/executions/{cancelled}/cancel", headers=tenant.headers)

    for eid in (failed, cancelled):
        r = await client.post(f"/api/executions/{eid}/retry", headers=tenant.headers)
        assert r.status_code == 202, r.text
        assert r.json() == {"execution_id": eid, "status": "queued", "priority": 5}
        state = await execution_state(redis, tenant, eid)
        assert state["status"] == "queued" and state["attempt"] == "1"
    assert (await work_lengths(redis, tenant.partition))[5] == 2

    # queued now: nothing to retry
    r = await _assert_refused(
        client, redis, settings, ("POST", f"/api/executions/{failed}/retry", None), tenant, 409, "conflict"
    )
    assert r.json()["error"]["status"] == "queued"


async def test_retry_of_running_is_409(
    client: httpx.AsyncClient, redis: Redis, settings: Settings, committer: Committer, tenant: TenantHandle
) -> None:
    eid = await _queued(client, tenant)
    await mark_running(committer, tenant, eid)
    r = await _assert_refused(
        client, redis, settings, ("POST", f"/api/executions/{eid}/retry", None), tenant, 409, "conflict"
    )
    assert r.json()["error"]["status"] == "running"


async def test_retry_takes_a_dead_lettered_execution_out_of_the_dlq(
    client: httpx.AsyncClient, redis: Redis, committer: Committer, tenant: TenantHandle
) -> None:
    eid = await _queued(client, tenant)
    await mark_failed(committer, tenant, eid, dead_letter=True)
    assert await redis.xlen(keys.dlq(tenant.partition)) == 1

    r = await client.post(f"/api/executions/{eid}/retry", headers=tenant.headers)

    assert r.status_code == 202
    assert await redis.xlen(keys.dlq(tenant.partition)) == 0
    assert (await execution_state(redis, tenant, eid))["dead_lettered"] == "0"


async def test_dlq_retry_and_purge(
    client: httpx.AsyncClient, redis: Redis, settings: Settings, committer: Committer, tenant: TenantHandle
) -> None:
    retried = await _queued(client, tenant)
    purged = await _queued(client, tenant)
    for eid in (retried, purged):
        await mark_failed(committer, tenant, eid, dead_letter=True)
    assert await redis.xlen(keys.dlq(tenant.partition)) == 2

    r = await client.post(f"/api/dlq/{retried}/retry", headers=tenant.headers)
    assert r.status_code == 202 and r.json()["status"] == "queued"
    r = await client.delete(f"/api/dlq/{purged}", headers=tenant.headers)
    assert r.status_code == 204 and r.content == b""

    assert await redis.xlen(keys.dlq(tenant.partition)) == 0
    assert (await execution_state(redis, tenant, purged))["status"] == "failed"
    types = await log_types(redis, tenant.partition)
    assert types[-2:] == ["execution.requeued", "execution.dlq_purged"]
    # neither is in the DLQ any more
    for method, path in (("POST", f"/api/dlq/{retried}/retry"), ("DELETE", f"/api/dlq/{purged}")):
        await _assert_refused(client, redis, settings, (method, path, None), tenant, 404, "not_found")


async def test_not_dead_lettered_is_not_in_the_dlq(
    client: httpx.AsyncClient, redis: Redis, settings: Settings, committer: Committer, tenant: TenantHandle
) -> None:
    eid = await _queued(client, tenant)
    await mark_failed(committer, tenant, eid, dead_letter=False)
    for method, path in (("POST", f"/api/dlq/{eid}/retry"), ("DELETE", f"/api/dlq/{eid}")):
        await _assert_refused(client, redis, settings, (method, path, None), tenant, 404, "not_found")


@pytest.mark.parametrize(
    ("method", "suffix", "body"),
    [
        ("POST", "/cancel", None),
        ("POST", "/retry", None),
        ("PATCH", "", {"priority": 4}),
    ],
)
async def test_another_tenants_execution_is_404(
    client: httpx.AsyncClient,
    redis: Redis,
    settings: Settings,
    committer: Committer,
    tenant: TenantHandle,
    other_tenant: TenantHandle,
    method: str,
    suffix: str,
    body: dict[str, object] | None,
) -> None:
    theirs = await _queued(client, other_tenant)
    await _assert_refused(
        client, redis, settings, (method, f"/api/executions/{theirs}{suffix}", body), tenant, 404, "not_found"
    )
    await _assert_refused(
        client, redis, settings, (method, f"/api/executions/nope{suffix}", body), tenant, 404, "not_found"
    )
    await mark_failed(committer, other_tenant, theirs, dead_letter=True)
    for dlq_method, path in (("POST", f"/api/dlq/{theirs}/retry"), ("DELETE", f"/api/dlq/{theirs}")):
        await _assert_refused(client, redis, settings, (dlq_method, path, None), tenant, 404, "not_found")
    assert (await execution_state(redis, other_tenant, theirs))["status"] == "failed"
