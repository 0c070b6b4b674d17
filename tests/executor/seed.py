"""Seeding a tenant's workflow straight into Redis, for executor tests that do not go through the API."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from shared.domain.aggregates import WorkflowState, encode_definition
from shared.domain.executions.admission import Run, admission_unit
from shared.infra.clock import new_id, now_ms
from shared.infra.plans import Plan, default_plans
from shared.log import keys
from shared.log.commit import Applied, Committer, Unit
from shared.log.consumer import records_of
from shared.log.events import Event
from shared.log.workflows import WorkflowDef

PARTITIONS = 4


async def seed_workflow(committer: Committer, tenant_id: str, definition: WorkflowDef,
                        plan: str = "enterprise") -> WorkflowState:
    """A tenant on ``plan`` (created if new) with one saved workflow."""
    p = keys.partition_of(tenant_id, PARTITIONS)
    workflow = WorkflowState(new_id(), tenant_id, definition.name, 1, False)
    unit = Unit(p).hset(keys.tenant(p, tenant_id), {"name": tenant_id, "plan": plan, "key_hash": "-",
                                                    "paused": "0"})
    unit.hset(keys.workflow(p, workflow.id), {"tenant": tenant_id, "name": definition.name,
                                                         "version": 1, "deleted": "0"})
    unit.set(keys.workflow_version(p, workflow.id, 1), encode_definition(definition))
    assert isinstance(await committer.commit(unit), Applied)
    return workflow


async def queue(committer: Committer, workflow: WorkflowState, definition: WorkflowDef, count: int = 1,
                priority: int = 5, params: dict[str, Any] | None = None, plan: Plan | None = None) -> list[str]:
    """Admit ``count`` runs as the API would, under ``plan`` (enterprise by default)."""
    p = keys.partition_of(workflow.tenant_id, PARTITIONS)
    runs = [Run(new_id(), priority, params or {}) for _ in range(count)]
    outcome = await committer.commit(admission_unit(
        p=p, tenant_id=workflow.tenant_id, plan=plan or default_plans()["enterprise"], workflow=workflow,
        definition=definition, runs=runs, now_ms=now_ms()))
    assert isinstance(outcome, Applied), outcome
    return [r.execution_id for r in runs]


async def status(redis: Redis, tenant_id: str, execution_id: str) -> dict[str, str]:
    p = keys.partition_of(tenant_id, PARTITIONS)
    raw = await redis.hgetall(keys.execution(p, execution_id))
    return {k.decode(): v.decode(errors="replace") for k, v in raw.items()}


def tenants_in_one_partition(count: int, prefix: str = "tenant") -> list[str]:
    """Tenant ids that share a partition (fair share is decided within a partition's levels)."""
    found: list[str] = []
    n = 0
    while len(found) < count:
        candidate = f"{prefix}-{n}"
        if keys.partition_of(candidate, PARTITIONS) == 0:
            found.append(candidate)
        n += 1
    return found


async def started_order(redis: Redis) -> list[Event]:
    """Every ``execution.started`` event of every partition, in the order they were appended (by stream id)."""
    started = []
    for p in range(PARTITIONS):
        for record in records_of(await redis.xrange(keys.log(p))):
            if record.type == "execution.started":
                started.append(record)
    started.sort(key=lambda r: tuple(int(x) for x in r.id.split("-")))
    return [r.event() for r in started]


async def events_of(redis: Redis, tenant_id: str, execution_id: str) -> list[Event]:
    p = keys.partition_of(tenant_id, PARTITIONS)
    records = records_of(await redis.xrange(keys.log(p)))
    return [e for e in (r.event() for r in records) if e.aggregate_id == execution_id]
