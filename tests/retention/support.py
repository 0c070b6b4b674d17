"""Helpers for retention tests: ending executions the way the executor does, and watching their hashes."""

from __future__ import annotations

from typing import Any

import msgspec
from redis.asyncio import Redis

from shared.domain.aggregates import Status
from shared.domain.executions import ops as execution_ops
from shared.infra.clock import now_ms
from shared.log import keys
from shared.log.commit import Applied, Committer, Unit
from shared.log.events import (
    ExecutionDeadLettered,
    ExecutionFailed,
    ExecutionStarted,
    StepCompleted,
    StepFailed,
    StepStarted,
)
from tests.api.support import TenantHandle

_packer = msgspec.msgpack.Encoder()


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
    unit.hincrby(keys.queued(p), tenant.id, -1)
    execution_ops.unqueue(unit, p, execution_id)
    unit.hset(key, {"status": Status.FAILED.value, "dead_lettered": "1", "step": 1, "out:0": _packer.encode(output),
                    "started_at": ts})
    unit.xadd(keys.dlq(p), {"e": execution_id, "tenant": tenant.id, "reason": "exhausted", "error": "boom"},
              ref=(key, "dlq_id"))
    assert isinstance(await committer.commit(unit), Applied)
