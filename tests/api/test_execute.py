"""Requesting executions: admission is atomic with the quota, idempotent by key, all or nothing in bulk."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import msgspec
import pytest
from redis.asyncio import Redis

from shared.domain.aggregates import decode_definition
from shared.infra.clock import month_of, now_ms
from shared.infra.settings import Settings
from shared.log import keys
from shared.log.consumer import records_of
from shared.log.events import ExecutionQueued, QuotaExceeded, decode
from tests.api.support import (
    TenantHandle,
    create_tenant,
    create_workflow,
    execution_state,
    log_lengths,
    work_lengths,
)


async def _usage(redis: Redis, tenant: TenantHandle) -> int:
    return int(await redis.get(keys.usage(tenant.partition, tenant.id, month_of(now_ms()))) or 0)


async def test_execute_queues_with_the_plan_default_priority(
    client: httpx.AsyncClient, redis: Redis, tenant: TenantHandle
) -> None:
    wf = await create_workflow(client, tenant)
    r = await client.post(f"/api/workflows/{wf['id']}/execute", json={"params": {"n": 1}}, headers=tenant.headers)

    assert r.status_code == 202, r.text
    body = r.json()
    assert body["status"] == "queued" and body["priority"] == 5  # pro plan default
    state = await execution_state(redis, tenant, body["execution_id"])
    assert state["status"] == "queued" and state["tenant"] == tenant.id and state["workflow_id"] == wf["id"]
    assert state["def_key"] == keys.workflow_version(tenant.partition, wf["id"], 1)
    assert (await work_lengths(redis, tenant.partition))[5] == 1
    assert await _usage(redis, tenant) == 1
    events = [r.event() for r in records_of(await redis.xrange(keys.log(tenant.partition)))]
    queued = [e for e in events if isinstance(e, ExecutionQueued)]
    assert len(queued) == 1 and queued[0].params == {"n": 1} and [s.action for s in queued[0].steps] == ["noop"]


async def test_empty_body_and_explicit_priority(client: httpx.AsyncClient, redis: Redis, tenant: TenantHandle) -> None:
    wf = await create_workflow(client, tenant)
    r = await client.post(f"/api/workflows/{wf['id']}/execute", headers=tenant.headers)
    assert r.status_code == 202 and r.json()["priority"] == 5
    r = await client.post(f"/api/workflows/{wf['id']}/execute", json={"priority": 3}, headers=tenant.headers)
    assert r.status_code == 202 and r.json()["priority"] == 3
    assert (await work_lengths(redis, tenant.partition))[3] == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"priority": 2}, "priority"),  # above what the pro plan allows
        ({"priority": 0}, "priority"),
        ({"priority": 11}, "priority"),
        ({"priority": "high"}, "priority"),
        ({"params": []}, "params"),
        ({"params": {"x": 2**80}}, "params.x"),
        ({"colour": 1}, "colour"),
    ],
)
async def test_bad_execute_body_is_422_and_queues_nothing(
    client: httpx.AsyncClient,
    redis: Redis,
    settings: Settings,
    tenant: TenantHandle,
    body: dict[str, Any],
    field: str,
) -> None:
    wf = await create_workflow(client, tenant)
    before = await log_lengths(redis, settings)
    r = await client.post(f"/api/workflows/{wf['id']}/execute", json=body, headers=tenant.headers)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == field
    assert await log_lengths(redis, settings) == before
    assert await _usage(redis, tenant) == 0


async def test_idempotency_key_returns_the_first_reply(
    client: httpx.AsyncClient, redis: Redis, settings: Settings, tenant: TenantHandle
) -> None:
    wf = await create_workflow(client, tenant)
    headers = {**tenant.headers, "Idempotency-Key": "order-42"}
    first = await client.post(f"/api/workflows/{wf['id']}/execute", json={"priority": 4}, headers=headers)
    before = await log_lengths(redis, settings)
    again = await client.post(f"/api/workflows/{wf['id']}/execute", json={"priority": 4}, headers=headers)

    assert first.status_code == again.status_code == 202
    assert again.json() == first.json()
    assert await log_lengths(redis, settings) == before
    assert await _usage(redis, tenant) == 1
    [stored] = await redis.keys(keys.idempotency(tenant.partition, tenant.id, "*"))
    assert stored.endswith(b"order-42")
    assert 23 * 3600 < await redis.ttl(stored) <= 24 * 3600


async def test_idempotency_keys_are_scoped_to_the_endpoint(client: httpx.AsyncClient, tenant: TenantHandle) -> None:
    one = await create_workflow(client, tenant)
    two = await create_workflow(client, tenant)
    headers = {**tenant.headers, "Idempotency-Key": "k"}
    single = await client.post(f"/api/workflows/{one['id']}/execute", headers=headers)
    bulk = await client.post(f"/api/workflows/{one['id']}/execute/bulk", json={"runs": [{}]}, headers=headers)
    other = await client.post(f"/api/workflows/{two['id']}/execute", headers=headers)

    assert set(single.json()) == {"execution_id", "status", "priority"}
    assert set(bulk.json()) == {"execution_ids"}
    assert other.json()["execution_id"] != single.json()["execution_id"]


async def test_concurrent_requests_with_one_key_queue_once(
    client: httpx.AsyncClient, redis: Redis, tenant: TenantHandle
) -> None:
    wf = await create_workflow(client, tenant)
    headers = {**tenant.headers, "Idempotency-Key": "same"}
    replies = await asyncio.gather(
        *(client.post(f"/api/workflows/{wf['id']}/execute", headers=headers) for _ in range(20))
    )
    assert {r.status_code for r in replies} == {202}
    assert len({r.json()["execution_id"] for r in replies}) == 1
    assert await _usage(redis, tenant) == 1


async def test_idempotency_keys_are_per_tenant(
    client: httpx.AsyncClient, tenant: TenantHandle, other_tenant: TenantHandle
) -> None:
    mine = await create_workflow(client, tenant)
    theirs = await create_workflow(client, other_tenant)
    a = await client.post(f"/api/workflows/{mine['id']}/execute", headers={**tenant.headers, "Idempotency-Key": "k"})
    b = await client.post(
        f"/api/workflows/{theirs['id']}/execute", headers={**other_tenant.headers, "Idempotency-Key": "k"}
    )
    assert a.json()["execution_id"] != b.json()["execution_id"]


async def test_bulk_queues_all_runs_in_one_unit(client: httpx.AsyncClient, redis: Redis, tenant: TenantHandle) -> None:
    wf = await create_workflow(client, tenant)
    runs = [{"params": {"i": i}} for i in range(10)] + [{"priority": 3}]
    r = await client.post(f"/api/workflows/{wf['id']}/execute/bulk", json={"runs": runs}, headers=tenant.headers)

    assert r.status_code == 202, r.text
    ids = r.json()["execution_ids"]
    assert len(ids) == len(set(ids)) == 11
    work = await work_lengths(redis, tenant.partition)
    assert work[5] == 10 and work[3] == 1
    assert await _usage(redis, tenant) == 11
    assert (await execution_state(redis, tenant, ids[-1]))["priority"] == "3"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"runs": []}, "runs"),
        ({"runs": [{}] * 1001}, "runs"),
        ({"runs": [{}, {"priority": 1}]}, "runs[1].priority"),
        ({"runs": [{}, {"params": "x"}]}, "runs[1].params"),
        ({}, "runs"),
    ],
)
async def test_bad_bulk_queues_nothing(
    client: httpx.AsyncClient,
    redis: Redis,
    settings: Settings,
    tenant: TenantHandle,
    body: dict[str, Any],
    field: str,
) -> None:
    wf = await create_workflow(client, tenant)
    before = await log_lengths(redis, settings)
    r = await client.post(f"/api/workflows/{wf['id']}/execute/bulk", json=body, headers=tenant.headers)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == field
    assert await log_lengths(redis, settings) == before
    assert sum((await work_lengths(redis, tenant.partition)).values()) == 0


async def test_quota_refuses_the_whole_bulk(client: httpx.AsyncClient, redis: Redis, settings: Settings) -> None:
    trial = await create_tenant(client, settings, plan="trial", name="tiny")
    wf = await create_workflow(client, trial)
    r = await client.post(f"/api/workflows/{wf['id']}/execute/bulk", json={"runs": [{}] * 99}, headers=trial.headers)
    assert r.status_code == 202
    assert await _usage(redis, trial) == 99
    work_before = await work_lengths(redis, trial.partition)
    log_before = await log_lengths(redis, settings)

    r = await client.post(f"/api/workflows/{wf['id']}/execute/bulk", json={"runs": [{}, {}]}, headers=trial.headers)

    assert r.status_code == 429
    error = r.json()["error"]
    assert error["code"] == "quota_exceeded"
    assert error["limit"] == 100 and error["used"] == 99
    assert error["resets_at"].endswith("Z") and error["message"]
    assert 0 < int(r.headers["Retry-After"]) <= 31 * 24 * 3600
    assert await work_lengths(redis, trial.partition) == work_before
    assert await _usage(redis, trial) == 99
    # the one event appended is the refusal itself
    after = await log_lengths(redis, settings)
    assert sum(after) - sum(log_before) == 1
    last = records_of(await redis.xrevrange(keys.log(trial.partition), count=1))[0].event()
    assert isinstance(last, QuotaExceeded) and last.requested == 2 and last.used == 99

    r = await client.post(f"/api/workflows/{wf['id']}/execute", headers=trial.headers)
    assert r.status_code == 202  # the 100th still fits
    me = (await client.get("/api/tenants/me", headers=trial.headers)).json()
    assert me["usage"]["executions"] == 100 and me["usage"]["remaining"] == 0


async def test_concurrent_executes_admit_exactly_the_quota(
    client: httpx.AsyncClient, redis: Redis, settings: Settings
) -> None:
    trial = await create_tenant(client, settings, plan="trial", name="burst")
    wf = await create_workflow(client, trial)

    replies = await asyncio.gather(
        *(client.post(f"/api/workflows/{wf['id']}/execute", headers=trial.headers) for _ in range(150))
    )

    codes = [r.status_code for r in replies]
    assert codes.count(202) == 100 and codes.count(429) == 50
    assert sum((await work_lengths(redis, trial.partition)).values()) == 100
    assert await _usage(redis, trial) == 100


async def test_execute_pins_the_version_it_saw(client: httpx.AsyncClient, redis: Redis, tenant: TenantHandle) -> None:
    wf = await create_workflow(client, tenant)
    first = (await client.post(f"/api/workflows/{wf['id']}/execute", headers=tenant.headers)).json()
    await client.put(
        f"/api/workflows/{wf['id']}",
        json={"name": "v2", "steps": [{"action": "log", "params": {"message": "hi"}}]},
        headers=tenant.headers,
    )
    second = (await client.post(f"/api/workflows/{wf['id']}/execute", headers=tenant.headers)).json()

    s1 = await execution_state(redis, tenant, first["execution_id"])
    s2 = await execution_state(redis, tenant, second["execution_id"])
    assert s1["def_key"].endswith(":1") and s2["def_key"].endswith(":2")
    assert decode_definition(await redis.get(s1["def_key"])).name == "hello"


async def test_execute_races_with_saves(client: httpx.AsyncClient, redis: Redis, tenant: TenantHandle) -> None:
    """A save landing between an execute's read and its commit makes it read again (once); losing twice is a
    409, and in every case what was queued is exactly what was counted, pinned to a version that exists."""
    wf = await create_workflow(client, tenant)
    body = {"name": "v", "steps": [{"action": "noop"}]}
    replies = await asyncio.gather(
        *(client.post(f"/api/workflows/{wf['id']}/execute", headers=tenant.headers) for _ in range(20)),
        *(client.put(f"/api/workflows/{wf['id']}", json=body, headers=tenant.headers) for _ in range(5)),
    )
    executes, saves = replies[:20], replies[20:]
    assert {r.status_code for r in saves} <= {200, 409}
    assert {r.status_code for r in executes} <= {202, 409}
    assert all(r.json()["error"]["code"] == "conflict" for r in executes if r.status_code == 409)
    queued = [r.json()["execution_id"] for r in executes if r.status_code == 202]
    assert queued
    assert await _usage(redis, tenant) == len(queued)
    for execution_id in queued:
        def_key = (await execution_state(redis, tenant, execution_id))["def_key"]
        assert await redis.exists(def_key)


async def test_a_bulk_of_a_large_workflow_does_not_copy_its_definition(
    client: httpx.AsyncClient, redis: Redis, tenant: TenantHandle
) -> None:
    """50 runs of a 1 MB workflow used to write 50 MB of events: each execution.queued embedded the definition.
    The definition is written once per version; the events pin it (issue 12, item 2)."""
    big = {"name": "big", "steps": [{"action": "set", "params": {"values": {"blob": "x" * 1_000_000}}},
                                    {"action": "noop", "label": "after"}]}
    wf = await create_workflow(client, tenant, big)
    before = int((await redis.info("memory"))["used_memory"])
    r = await client.post(f"/api/workflows/{wf['id']}/execute/bulk", json={"runs": [{}] * 50},
                          headers=tenant.headers)
    assert r.status_code == 202, r.text
    grown = int((await redis.info("memory"))["used_memory"]) - before
    assert grown < 5 * 1024 * 1024, f"Redis grew by {grown} bytes"
    [(_, fields)] = await redis.xrevrange(keys.log(tenant.partition), count=1)
    event = decode(fields[b"d"])
    assert isinstance(event, ExecutionQueued)
    assert [(s.action, s.label) for s in event.steps] == [("set", None), ("noop", "after")]


def test_a_v1_queued_event_is_read_with_its_steps_outline() -> None:
    """Events written before the change embedded the definition; they are upcast on read."""
    v1 = msgspec.msgpack.encode({
        "type": "execution.queued", "tenant_id": "t", "aggregate_id": "e", "ts": 1, "v": 1, "workflow_id": "w",
        "workflow_version": 3, "priority": 5, "params": {"a": 1},
        "definition": {"name": "old", "steps": [{"action": "noop", "label": "first"}, {"action": "log"}]},
    })
    event = decode(v1)
    assert isinstance(event, ExecutionQueued) and event.v == 2 and event.workflow_version == 3
    assert [(s.action, s.label) for s in event.steps] == [("noop", "first"), ("log", None)]
