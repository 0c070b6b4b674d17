"""Helpers for API tests: tenants, workflows, log snapshots, and execution states set straight in Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from redis.asyncio import Redis

from shared.domain.aggregates import Status
from shared.domain.executions import ops as execution_ops
from shared.infra.clock import now_ms
from shared.infra.settings import Settings
from shared.log import keys
from shared.log.commit import Applied, Committer, Unit
from shared.log.consumer import records_of
from shared.log.events import ExecutionDeadLettered, ExecutionFailed, ExecutionStarted

NOOP_WORKFLOW: dict[str, Any] = {"name": "hello", "steps": [{"action": "noop"}]}


@dataclass(frozen=True)
class TenantHandle:
    id: str
    api_key: str
    plan: str
    partition: int

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}


def admin_headers(settings: Settings) -> dict[str, str]:
    return {"Authorization": f"Bearer {settings.admin_token}"}


async def create_tenant(
    client: httpx.AsyncClient, settings: Settings, plan: str = "pro", name: str = "acme"
) -> TenantHandle:
    r = await client.post("/api/tenants", json={"name": name, "plan": plan}, headers=admin_headers(settings))
    assert r.status_code == 201, r.text
    body = r.json()
    return TenantHandle(body["id"], body["api_key"], plan, keys.partition_of(body["id"], settings.partitions))


async def create_workflow(
    client: httpx.AsyncClient, tenant: TenantHandle, body: dict[str, Any] | None = None
) -> dict[str, Any]:
    r = await client.post("/api/workflows", json=body or NOOP_WORKFLOW, headers=tenant.headers)
    assert r.status_code == 201, r.text
    result: dict[str, Any] = r.json()
    return result


async def log_lengths(redis: Redis, settings: Settings) -> list[int]:
    """XLEN of every partition's log: refused commands must leave these unchanged."""
    return [await redis.xlen(keys.log(p)) for p in range(settings.partitions)]


async def work_lengths(redis: Redis, p: int) -> dict[int, int]:
    """Executions waiting for dispatch at each level: backlog entries whose state is still queued there.

    An execution may stand in a backlog more than once (left behind by a cancel or a priority change, and
    skipped by the dispatcher); it counts once.
    """
    lengths = {}
    for prio in keys.PRIORITIES:
        waiting: set[bytes] = set()
        async for key in redis.scan_iter(match=keys.backlog(p, prio, "*")):
            for execution_id in await redis.lrange(key, 0, -1):
                status, priority = await redis.hmget(keys.execution(p, execution_id.decode()), "status", "priority")
                if status == b"queued" and priority == str(prio).encode():
                    waiting.add(execution_id)
        lengths[prio] = len(waiting)
    return lengths


async def log_types(redis: Redis, p: int) -> list[str]:
    return [r.type for r in records_of(await redis.xrange(keys.log(p)))]


async def execution_state(redis: Redis, tenant: TenantHandle, execution_id: str) -> dict[str, str]:
    raw = await redis.hgetall(keys.execution(tenant.partition, execution_id))
    return {k.decode(): v.decode(errors="replace") for k, v in raw.items()}


async def state_reaches(redis: Redis, tenant: TenantHandle, execution_id: str, field: str, *values: str,
                        timeout: float = 20.0) -> dict[str, str]:
    """The execution's Redis state once ``field`` holds one of ``values`` (an assertion error after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        current = await execution_state(redis, tenant, execution_id)
        if current.get(field) in values:
            return current
        assert time.monotonic() < deadline, f"{field} stayed {current.get(field)!r}, wanted {values}: {current}"
        await asyncio.sleep(0.05)


async def mark_running(committer: Committer, tenant: TenantHandle, execution_id: str) -> None:
    """What dispatch's hand-out and the executor's start unit do, enough for the API's guards: the execution
    is owned by an executor and holds one of the tenant's running slots."""
    state_key = keys.execution(tenant.partition, execution_id)
    unit = Unit(tenant.partition).require(state_key, "status", [Status.QUEUED.value], "status")
    unit.event(
        ExecutionStarted(tenant_id=tenant.id, aggregate_id=execution_id, ts=now_ms(), attempt=1, executor="test")
    )
    unit.hset(state_key, {"status": Status.RUNNING.value, "owner": "test", "started_at": now_ms()})
    unit.hincrby(keys.running(tenant.partition), tenant.id, 1)
    assert isinstance(await committer.commit(unit), Applied)


async def mark_failed(committer: Committer, tenant: TenantHandle, execution_id: str, *, dead_letter: bool) -> None:
    """What the executor does after the last failed attempt: failed, and (optionally) into the DLQ."""
    p = tenant.partition
    state_key = keys.execution(p, execution_id)
    ts = now_ms()
    unit = Unit(p).event(
        ExecutionFailed(tenant_id=tenant.id, aggregate_id=execution_id, ts=ts, error="boom", dead_lettered=dead_letter)
    )
    execution_ops.unwork(unit, p, execution_id)
    execution_ops.release(unit, p, tenant.id, execution_id)
    unit.hset(state_key, {"status": Status.FAILED.value})
    if dead_letter:
        unit.event(ExecutionDeadLettered(tenant_id=tenant.id, aggregate_id=execution_id, ts=ts, error="boom"))
        unit.xadd(keys.dlq(p), {"e": execution_id, "tenant": tenant.id}, ref=(state_key, "dlq_id"))
        unit.hset(state_key, {"dead_lettered": "1"})
    assert isinstance(await committer.commit(unit), Applied)


@asynccontextmanager
async def projector(settings: Settings) -> AsyncIterator[None]:
    """The real projector, in the background, filling the SQL tables the query endpoints read."""
    from services.projector.projector import serve as serve_projector

    async with _serving(serve_projector, settings):
        yield


@asynccontextmanager
async def executor(settings: Settings) -> AsyncIterator[None]:
    """A real executor (``orq executor``'s own start-up), in the background."""
    from services.executor.worker import serve as serve_executor

    async with _serving(serve_executor, settings):
        yield


@asynccontextmanager
async def trigger_service(settings: Settings) -> AsyncIterator[None]:
    """The real trigger service (``orq trigger``), in the background: chaining, queue items, sub-workflows."""
    from services.trigger.service import serve as serve_triggers

    async with _serving(serve_triggers, settings):
        yield


@asynccontextmanager
async def _serving(serve: Callable[[Settings, asyncio.Event], Awaitable[None]],
                   settings: Settings) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def execute(client: httpx.AsyncClient, tenant: TenantHandle, workflow_id: str, **body: Any) -> str:
    """``POST …/execute`` (202) and the new execution's id."""
    r = await client.post(f"/api/workflows/{workflow_id}/execute", json=body, headers=tenant.headers)
    assert r.status_code == 202, r.text
    execution_id: str = r.json()["execution_id"]
    return execution_id


async def get_execution(client: httpx.AsyncClient, tenant: TenantHandle, execution_id: str) -> dict[str, Any]:
    """``GET /api/executions/{id}`` (200) and its body."""
    r = await client.get(f"/api/executions/{execution_id}", headers=tenant.headers)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body
