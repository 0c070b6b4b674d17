"""Helpers for retention tests: ending executions the way the executor does, and watching their hashes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import msgspec
from redis.asyncio import Redis

from shared import keys
from shared.clock import now_ms
from shared.commit import Applied, Committer, Unit
from shared.events import (
    ExecutionDeadLettered,
    ExecutionFailed,
    ExecutionStarted,
    StepCompleted,
    StepFailed,
    StepStarted,
)
from shared.settings import Settings
from shared.state import Status
from tests.api.support import TenantHandle

_packer = msgspec.msgpack.Encoder()


@asynccontextmanager
async def executor(settings: Settings) -> AsyncIterator[None]:
    """A real executor in the background."""
    from services.executor.worker import serve as serve_executor

    stop = asyncio.Event()
    task = asyncio.create_task(serve_executor(settings, stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def execute(client: httpx.AsyncClient, tenant: TenantHandle, workflow_id: str, **body: Any) -> str:
    r = await client.post(f"/api/workflows/{workflow_id}/execute", json=body, headers=tenant.headers)
    assert r.status_code == 202, r.text
    execution_id: str = r.json()["execution_id"]
    return execution_id


async def exec_keys(redis: Redis) -> int:
    """How many execution hashes Redis holds (``orq:*:exec:*``)."""
    return len([k async for k in redis.scan_iter(match="orq:*:exec:*", count=1000)])


async def fail_at_second_step(committer: Committer, tenant: TenantHandle, execution_id: str, output: Any) -> None:
    """What the executor commits for a run whose step 0 completes with ``output`` and whose step 1 fails on
    the last attempt: dead-lettered, resuming at step 1, with step 0's output in the state."""
    p, ts = tenant.partition, now_ms()
    key = keys.execution(p, execution_id)
    ids: dict[str, Any] = {"tenant_id": tenant.id, "aggregate_id": execution_id, "ts": ts}
    unit = Unit(p).require(key, "status", [Status.QUEUED.value], "status")
    unit.event(ExecutionStarted(**ids, attempt=1, executor="test"))
    unit.event(StepStarted(**ids, step_index=0, action="set"))
    unit.event(StepCompleted(**ids, step_index=0, output=output))
    unit.event(StepStarted(**ids, step_index=1, action="set"))
    unit.event(StepFailed(**ids, step_index=1, error="boom"))
    unit.event(ExecutionFailed(**ids, error="boom", dead_lettered=True))
    unit.event(ExecutionDeadLettered(**ids, error="boom"))
    unit.hincrby(keys.queued(p), tenant.id, -1).unqueue(p, execution_id)
    unit.hset(key, {"status": Status.FAILED.value, "dead_lettered": "1", "step": 1, "out:0": _packer.encode(output),
                    "started_at": ts})
    unit.xadd(keys.dlq(p), {"e": execution_id, "t": tenant.id, "reason": "exhausted", "error": "boom"},
              ref=(key, "dlq_id"))
    assert isinstance(await committer.commit(unit), Applied)
