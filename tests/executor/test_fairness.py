"""Dispatch order and limits: priority across tenants and partitions, weighted fair share, plan limits."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from shared.domain.executions import ops as execution_ops
from shared.infra.plans import Plan, default_plans
from shared.log import keys
from shared.log.commit import Committer, Unit
from shared.log.events import ExecutionCompleted, ExecutionStarted
from shared.log.workflows import StepDef, WorkflowDef
from tests.executor.seed import (
    PARTITIONS,
    events_of,
    queue,
    seed_workflow,
    started_order,
    status,
    tenants_in_one_partition,
)
from tests.helpers import assert_eventually

SHORT = WorkflowDef(name="short", steps=[StepDef(action="delay", params={"ms": 20})])


async def all_completed(redis: Redis, tenant: str, ids: list[str], timeout: float = 20) -> None:
    async def check() -> bool:
        states = [await status(redis, tenant, i) for i in ids]
        return all(s.get("status") == "completed" for s in states)

    await assert_eventually(check, timeout=timeout, message=f"{len(ids)} executions of {tenant} completed")


async def test_priority_one_goes_first_across_tenants_and_partitions(redis: Redis, committer: Committer,
                                                                     start_executor) -> None:
    busy = "tenant-busy"
    urgent_tenant = next(t for t in (f"tenant-urgent-{n}" for n in range(100))
                         if keys.partition_of(t, PARTITIONS) != keys.partition_of(busy, PARTITIONS))
    busy_wf = await seed_workflow(committer, busy, SHORT)
    urgent_wf = await seed_workflow(committer, urgent_tenant, SHORT)
    await queue(committer, busy_wf, SHORT, count=50, priority=9)
    [urgent] = await queue(committer, urgent_wf, SHORT, priority=1)
    start_executor(executor_concurrency=1)
    await all_completed(redis, urgent_tenant, [urgent])
    assert (await started_order(redis))[0].aggregate_id == urgent


async def test_a_flooding_tenant_does_not_delay_anothers_first_run(redis: Redis, committer: Committer,
                                                                   start_executor) -> None:
    flooder, newcomer = tenants_in_one_partition(2)
    slots = 4
    flood_wf = await seed_workflow(committer, flooder, SHORT)
    new_wf = await seed_workflow(committer, newcomer, SHORT)
    await queue(committer, flood_wf, SHORT, count=1000, priority=5)
    start_executor(executor_concurrency=slots)

    async def some_started() -> bool:
        return len(await started_order(redis)) >= 10

    await assert_eventually(some_started, timeout=10, message="the flood is being served")
    before = len(await started_order(redis))
    [first] = await queue(committer, new_wf, SHORT, priority=5)
    await all_completed(redis, newcomer, [first])
    order = [e.aggregate_id for e in await started_order(redis)]
    waited = order.index(first) - before
    assert waited <= 2 * slots, f"the newcomer waited {waited} starts behind a backlog of 1000"


async def test_weights_share_a_level_by_plan(redis: Redis, committer: Committer, start_executor) -> None:
    big, small = tenants_in_one_partition(2, prefix="weighted")
    plans = {**default_plans(),
             "heavy": Plan(name="heavy", monthly_quota=0, rate_per_minute=0, max_concurrent=0, default_priority=5,
                           min_priority=1, weight=4),
             "light": Plan(name="light", monthly_quota=0, rate_per_minute=0, max_concurrent=0, default_priority=5,
                           min_priority=1, weight=1)}
    big_wf = await seed_workflow(committer, big, SHORT, plan="heavy")
    small_wf = await seed_workflow(committer, small, SHORT, plan="light")
    await queue(committer, big_wf, SHORT, count=100)
    await queue(committer, small_wf, SHORT, count=100)
    start_executor(executor_concurrency=2, plans=plans)

    async def fifty_started() -> bool:
        return len(await started_order(redis)) >= 50

    await assert_eventually(fifty_started, timeout=20, message="50 started")
    first_50 = [e.tenant_id for e in (await started_order(redis))[:50]]
    share = first_50.count(big) / 50
    assert 0.7 <= share <= 0.9, f"weight 4 vs 1 should get about 80% of starts, got {share:.0%}"


def _max_overlap(events: list[object]) -> int:
    running, peak = 0, 0
    for event in sorted(events, key=lambda e: (e.id.split("-")[0], int(e.id.split("-")[1]))):  # type: ignore[attr-defined]
        running += 1 if isinstance(event, ExecutionStarted) else -1
        peak = max(peak, running)
    return peak


async def test_concurrency_cap_is_never_exceeded(redis: Redis, committer: Committer, start_executor) -> None:
    tenant = "tenant-capped"
    slow = WorkflowDef(name="slow", steps=[StepDef(action="delay", params={"ms": 150})])
    workflow = await seed_workflow(committer, tenant, slow, plan="trial")  # trial: 2 at a time
    ids = await queue(committer, workflow, slow, count=8, priority=8)
    start_executor(executor_concurrency=10)
    start_executor(executor_concurrency=10)
    await all_completed(redis, tenant, ids)
    edges = [e for i in ids for e in await events_of(redis, tenant, i)
             if isinstance(e, ExecutionStarted | ExecutionCompleted)]
    assert _max_overlap(edges) == 2
    p = keys.partition_of(tenant, PARTITIONS)
    assert await redis.hget(keys.running(p), tenant) == b"0"


async def test_rate_limit_delays_without_loss(redis: Redis, committer: Committer, start_executor) -> None:
    tenant = "tenant-rated"
    window_s = 1.0
    plans = {**default_plans(), "metered": Plan(name="metered", monthly_quota=0, rate_per_minute=3,
                                                  max_concurrent=0, default_priority=5, min_priority=1)}
    workflow = await seed_workflow(committer, tenant, SHORT, plan="metered")
    ids = await queue(committer, workflow, SHORT, count=8)
    start_executor(executor_concurrency=10, plans=plans, rate_window_s=window_s)
    await all_completed(redis, tenant, ids, timeout=30)
    starts = [e for e in await started_order(redis) if e.tenant_id == tenant]
    assert len(starts) == 8, "every parked run ran, once"
    per_window: dict[int, int] = {}
    for event in starts:
        window = int(event.id.split("-")[0]) // int(window_s * 1000)
        per_window[window] = per_window.get(window, 0) + 1
    assert max(per_window.values()) <= 3 and len(per_window) >= 3


async def test_paused_tenant_waits_then_resumes(redis: Redis, committer: Committer, start_executor) -> None:
    tenant = "tenant-paused"
    workflow = await seed_workflow(committer, tenant, SHORT)
    p = keys.partition_of(tenant, PARTITIONS)
    await committer.commit(Unit(p).hset(keys.tenant(p, tenant), {"paused": "1"}))
    ids = await queue(committer, workflow, SHORT, count=3)
    start_executor()
    await asyncio.sleep(0.5)  # give the executor every chance to (wrongly) start them
    assert [(await status(redis, tenant, i))["status"] for i in ids] == ["queued"] * 3
    await committer.commit(Unit(p).hset(keys.tenant(p, tenant), {"paused": "0"}).ring(p))
    await all_completed(redis, tenant, ids)


async def test_paused_workflow_sets_aside_and_resumes_in_order(redis: Redis, committer: Committer,
                                                               start_executor) -> None:
    tenant = "tenant-wfpause"
    held = await seed_workflow(committer, tenant, SHORT)
    other_def = WorkflowDef(name="other", steps=[StepDef(action="noop")])
    other = await seed_workflow(committer, tenant, other_def)
    p = keys.partition_of(tenant, PARTITIONS)
    await committer.commit(Unit(p).hset(keys.workflow(p, held.id), {"paused": "1"}))
    held_ids = await queue(committer, held, SHORT, count=3)
    other_ids = await queue(committer, other, other_def, count=2)
    start_executor(executor_concurrency=1)
    await all_completed(redis, tenant, other_ids)
    assert [(await status(redis, tenant, i))["status"] for i in held_ids] == ["queued"] * 3
    await committer.commit(execution_ops.unpark(Unit(p).hset(keys.workflow(p, held.id), {"paused": "0"}), p, held.id))
    await all_completed(redis, tenant, held_ids)
    order = [e.aggregate_id for e in await started_order(redis) if e.aggregate_id in held_ids]
    assert order == held_ids, "set-aside executions keep their order"
