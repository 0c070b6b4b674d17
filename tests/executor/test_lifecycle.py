"""One test per lifecycle defect found by review and fault drills (issue 11): each failed before its fix.

Executors are real and run on the real Redis; most are driven step by step (:mod:`tests.executor.lifecycle`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

import httpx
import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from services.executor.run import StepContext
from services.executor.worker import Executor
from services.trigger.log_reactions import outcome_of
from shared.domain import commit_script
from shared.domain.actions.runtime import Actions
from shared.domain.aggregates import Status, WorkflowState
from shared.domain.executions.commands import (
    cancel_unit,
    priority_unit,
    requeue_unit,
    workflow_delete_unit,
    workflow_pause_unit,
)
from shared.infra.clock import now_ms
from shared.infra.settings import Settings
from shared.log import keys
from shared.log.commit import Applied, Committer, Outcome, Unit
from shared.log.events import ExecutionDeadLettered, ExecutionFailed
from shared.log.workflows import Backoff, RetryPolicy, StepDef, WorkflowDef
from tests.executor.lifecycle import PLANS, Rig, check_invariants
from tests.executor.seed import PARTITIONS, events_of, queue, seed_workflow, status, tenants_in_one_partition
from tests.helpers import REDIS_URL, assert_eventually

TENANT = tenants_in_one_partition(1, prefix="life")[0]
P = keys.partition_of(TENANT, PARTITIONS)
GATED = WorkflowDef(name="gated", steps=[StepDef(action="gate"), StepDef(action="noop")],
                    retry=RetryPolicy(attempts=3, backoff=Backoff(type="fixed", delay_ms=1)))


@pytest.fixture
async def rig(redis: Redis) -> AsyncIterator[Rig]:
    async with httpx.AsyncClient() as client:
        rig = Rig(redis, client, PARTITIONS)
        yield rig
        await rig.close()


async def _queue(committer: Committer, workflow: WorkflowState, definition: WorkflowDef, count: int = 1,
                 plan: str = "enterprise") -> list[str]:
    return await queue(committer, workflow, definition, count=count, plan=PLANS[plan])


async def _types(redis: Redis, execution_id: str, tenant: str = TENANT) -> list[str]:
    return [e.__struct_config__.tag for e in await events_of(redis, tenant, execution_id)]  # type: ignore[misc]


async def _cancel(committer: Committer, redis: Redis, execution_id: str, tenant: str = TENANT) -> None:
    observed = Status((await status(redis, tenant, execution_id))["status"])
    unit = cancel_unit(p=keys.partition_of(tenant, PARTITIONS), tenant_id=tenant, execution_id=execution_id,
                       observed=observed, now_ms=now_ms())
    assert isinstance(await committer.commit(unit), Applied)


async def test_sigterm_keeps_renewing_leases_while_steps_finish(redis: Redis, committer: Committer) -> None:
    """Defect 1: a step longer than the lease, running while its executor drains, is not taken over."""
    definition = WorkflowDef(name="long", steps=[StepDef(action="delay", params={"ms": 2500})])
    workflow = await seed_workflow(committer, TENANT, definition)
    settings = replace(Settings(redis_url=REDIS_URL, partitions=PARTITIONS), lease_s=0.9, shutdown_grace_s=10.0)
    async with httpx.AsyncClient() as client:
        draining, other = (
            Executor(settings, redis, commit_script.committer(redis), Actions(client, plugins={}), name=name)
            for name in ("draining", "other")
        )
        stop_draining, stop_other = asyncio.Event(), asyncio.Event()
        first = asyncio.create_task(draining.run(stop_draining))
        [execution_id] = await _queue(committer, workflow, definition)
        await assert_eventually(lambda: _is(redis, execution_id, "running"), message="started")
        stop_draining.set()  # SIGTERM
        second = asyncio.create_task(other.run(stop_other))
        await assert_eventually(lambda: _is(redis, execution_id, "completed"), timeout=15, message="completed")
        await first
        stop_other.set()
        await second
    state = await status(redis, TENANT, execution_id)
    assert state["crash_count"] == "0"
    assert (await _types(redis, execution_id)).count("step.started") == 1, "the step ran twice"


async def _is(redis: Redis, execution_id: str, expected: str, tenant: str = TENANT) -> bool:
    return (await status(redis, tenant, execution_id)).get("status") == expected


async def test_a_stale_executor_cannot_touch_a_run_another_parked_for_retry(
    rig: Rig, redis: Redis, committer: Committer
) -> None:
    """Defect 2: the presumed-dead executor wakes up after the taker parked the run in backoff."""
    workflow = await seed_workflow(committer, TENANT, GATED)
    stale, taker = await rig.start_node(), await rig.start_node()
    [execution_id] = await _queue(committer, workflow, GATED)
    await stale.dispatch()
    await rig.settle()
    await rig.expire(stale)  # it looked dead for a lease
    await taker.take_expired()
    await rig.settle()
    rig.gate.open(execution_id, ok=False)  # both runs fail the step: the taker's counts, the stale one's must not
    await rig.settle()
    state = await status(redis, TENANT, execution_id)
    assert state["status"] == "retrying" and state["retry_count"] == "1"
    await check_invariants(redis, P)
    await taker.take_due()
    await rig.settle()
    rig.gate.open(execution_id, ok=True)
    await rig.settle()
    assert await _is(redis, execution_id, "completed")
    assert int(await redis.hget(keys.running(P), TENANT) or 0) == 0
    await check_invariants(redis, P)


async def test_a_run_cancelled_while_its_executor_is_dead_never_comes_back(
    rig: Rig, redis: Redis, committer: Committer
) -> None:
    """Defect 3."""
    workflow = await seed_workflow(committer, TENANT, GATED)
    dead, taker = await rig.start_node(), await rig.start_node()
    [execution_id] = await _queue(committer, workflow, GATED)
    await dead.dispatch()
    await rig.settle()
    dead.crash()
    await _cancel(committer, redis, execution_id)
    await rig.expire(dead)
    await taker.take_expired()
    await rig.settle()
    assert not rig.gate.waiting(), "the cancelled run was started again"
    types = await _types(redis, execution_id)
    assert types[-1] == "execution.cancelled" and types.count("execution.started") == 1
    assert int(await redis.hget(keys.running(P), TENANT) or 0) == 0
    await check_invariants(redis, P)


async def test_an_execution_is_never_twice_in_the_queue(rig: Rig, redis: Redis, committer: Committer) -> None:
    """Defect 4: priority 5 -> 3 -> 5 while queued; cancel then retry; a priority change while paused."""
    workflow = await seed_workflow(committer, TENANT, GATED)
    moved, retried, parked = await _queue(committer, workflow, GATED, count=3)
    for previous, priority in ((5, 3), (3, 5)):
        unit = priority_unit(p=P, tenant_id=TENANT, execution_id=moved, previous=previous, priority=priority,
                             now_ms=now_ms())
        assert isinstance(await committer.commit(unit), Applied)
    await _cancel(committer, redis, retried)
    unit = requeue_unit(p=P, tenant_id=TENANT, execution_id=retried, observed=Status.CANCELLED, priority=5,
                        from_dlq=False, now_ms=now_ms())
    assert isinstance(await committer.commit(unit), Applied)
    node = await rig.start_node(slots=10)
    await committer.commit(workflow_pause_unit(p=P, tenant_id=TENANT, workflow_id=workflow.id, paused=True,
                                               now_ms=now_ms()))
    await node.dispatch()  # everything is set aside: the workflow is paused
    unit = priority_unit(p=P, tenant_id=TENANT, execution_id=parked, previous=5, priority=3, now_ms=now_ms())
    assert isinstance(await committer.commit(unit), Applied)
    await check_invariants(redis, P)
    await committer.commit(workflow_pause_unit(p=P, tenant_id=TENANT, workflow_id=workflow.id, paused=False,
                                               now_ms=now_ms()))
    await node.dispatch()
    await rig.settle()
    assert sorted(rig.gate.waiting()) == sorted([moved, retried, parked])
    assert len(node.executor._running) == 3, "an execution was handed out twice"
    await check_invariants(redis, P)
    for execution_id in (moved, retried, parked):
        rig.gate.open(execution_id, ok=True)
    await rig.settle()
    await node.dispatch()
    await rig.settle()
    for execution_id in (moved, retried, parked):
        assert (await _types(redis, execution_id)).count("execution.completed") == 1
    await check_invariants(redis, P)


async def test_a_retry_is_taken_when_due_however_many_wait_before_it(
    rig: Rig, redis: Redis, committer: Committer
) -> None:
    """Defect 5: 120 retries due in an hour are parked first; a retry due now still runs at the next scan."""
    later = WorkflowDef(name="later", steps=[StepDef(action="fail", params={"message": "no"})],
                        retry=RetryPolicy(attempts=2, backoff=Backoff(type="fixed", delay_ms=3_600_000)))
    soon = WorkflowDef(name="soon", steps=[StepDef(action="fail", params={"message": "no", "until_attempt": 2})],
                       retry=RetryPolicy(attempts=2, backoff=Backoff(type="fixed", delay_ms=1)))
    waiting = await _queue(committer, await seed_workflow(committer, TENANT, later), later, count=120)
    node = await rig.start_node(slots=200)
    for _ in range(3):  # 50 at a time: the plan's concurrency limit
        await node.dispatch()
        await rig.settle()
    [soon_id] = await _queue(committer, await seed_workflow(committer, TENANT, soon), soon)
    await node.dispatch()
    await rig.settle()
    statuses = [(await status(redis, TENANT, i)).get("status") for i in [*waiting, soon_id]]
    assert statuses == ["retrying"] * 121, statuses
    await asyncio.sleep(0.01)
    await node.take_due()
    await rig.settle()
    assert await _is(redis, soon_id, "completed")
    await check_invariants(redis, P)


async def test_tenants_without_room_cannot_starve_the_others(rig: Rig, redis: Redis, committer: Committer) -> None:
    """Defect 6: 20 tenants at their concurrency limit are ahead of another tenant in a level's fair-share order;
    that tenant's run still starts."""
    *crowd, latecomer = tenants_in_one_partition(21, prefix="crowd")
    node = await rig.start_node(slots=60)
    behind = await seed_workflow(committer, latecomer, GATED, plan="tight")
    first = await _queue(committer, behind, GATED, count=3, plan="tight")
    await node.dispatch()  # it takes two: its virtual time moves to 2, and it is at its limit
    await rig.settle()
    for tenant in crowd:
        workflow = await seed_workflow(committer, tenant, GATED, plan="single")
        await _queue(committer, workflow, GATED, count=2, plan="single")
    await node.dispatch()  # one each: every one is at its limit, one run waiting, virtual time 1
    await rig.settle()
    assert len(rig.gate.waiting()) == 22
    for execution_id in first[:2]:
        rig.gate.open(execution_id, ok=True)
    await rig.settle()  # the latecomer has room again, behind the 20 in the level's order
    for _ in range(3):  # a few dispatch rounds, as executors would make
        await node.dispatch()
    await rig.settle()
    assert first[2] in rig.gate.waiting(), "its third run did not start"
    await check_invariants(redis, keys.partition_of(latecomer, PARTITIONS))


async def test_an_executor_takes_back_its_own_orphaned_run(rig: Rig, redis: Redis, committer: Committer) -> None:
    """Defect 7: with a single executor, a run that died inside it (a dropped connection) is taken back."""
    workflow = await seed_workflow(committer, TENANT, GATED)
    only = await rig.start_node()
    [execution_id] = await _queue(committer, workflow, GATED)
    await only.dispatch()
    await rig.settle()
    assert only.drop_run(execution_id)
    await rig.settle()
    await rig.expire(only)
    await only.take_expired()
    await rig.settle()
    rig.gate.open(execution_id, ok=True)
    await rig.settle()
    state = await status(redis, TENANT, execution_id)
    assert state["status"] == "completed" and state["crash_count"] == "1"
    await check_invariants(redis, P)


async def test_cancel_notices_survive_a_redis_reconnect(redis: Redis, committer: Committer) -> None:
    """Defect 8: after the subscription's connection is dropped, a cancel still interrupts the running step."""
    definition = WorkflowDef(name="long", steps=[StepDef(action="delay", params={"ms": 20_000})])
    workflow = await seed_workflow(committer, TENANT, definition)
    settings = replace(Settings(redis_url=REDIS_URL, partitions=PARTITIONS), lease_s=30.0)
    async with httpx.AsyncClient() as client:
        executor = Executor(settings, redis, commit_script.committer(redis), Actions(client, plugins={}))
        stop = asyncio.Event()
        task = asyncio.create_task(executor.run(stop))
        channel = keys.cancel_channel(P)

        async def subscribed() -> bool:
            return dict(await redis.pubsub_numsub(channel))[channel.encode()] == 1

        await assert_eventually(subscribed, message="subscribed")
        [execution_id] = await _queue(committer, workflow, definition)
        await assert_eventually(lambda: _is(redis, execution_id, "running"), message="started")
        await redis.client_kill_filter(_type="pubsub")
        await assert_eventually(subscribed, timeout=10, message="subscribed again")
        await _cancel(committer, redis, execution_id)
        await assert_eventually(lambda: _no_runs(executor), timeout=5, message="the step was interrupted")
        stop.set()
        await task
    assert (await _types(redis, execution_id))[-1] == "execution.cancelled"


async def _no_runs(executor: Executor) -> bool:
    return not executor._running


def test_a_poison_dead_letter_ends_the_run_once() -> None:
    """Defect 9: chained workflows fired twice (execution.failed, then execution.dead_lettered as poison)."""
    ids = {"tenant_id": TENANT, "aggregate_id": "e1", "ts": 1}
    ended = [outcome_of(ExecutionFailed(**ids, error="crashed", dead_lettered=True)),  # type: ignore[arg-type]
             outcome_of(ExecutionDeadLettered(**ids, reason="poison", error="crashed"))]  # type: ignore[arg-type]
    assert [e for e in ended if e is not None] == [("failed", None, "crashed")]


async def test_deleting_a_paused_workflow_lets_its_set_aside_runs_go(
    rig: Rig, redis: Redis, committer: Committer
) -> None:
    """Defect 10: they stayed queued forever, counted against the tenant's backlog."""
    workflow = await seed_workflow(committer, TENANT, GATED)
    ids = await _queue(committer, workflow, GATED, count=2)
    node = await rig.start_node()
    await committer.commit(workflow_pause_unit(p=P, tenant_id=TENANT, workflow_id=workflow.id, paused=True,
                                               now_ms=now_ms()))
    await node.dispatch()
    assert await redis.llen(keys.parked(P, workflow.id)) == 2
    await committer.commit(workflow_delete_unit(p=P, tenant_id=TENANT, workflow_id=workflow.id, now_ms=now_ms()))
    assert not await redis.exists(keys.parked(P, workflow.id))
    await node.dispatch()
    await rig.settle()
    for execution_id in ids:
        rig.gate.open(execution_id, ok=True)
    await rig.settle()
    assert all([await _is(redis, i, "completed") for i in ids])
    assert int(await redis.hget(keys.queued(P), TENANT) or 0) == 0
    await check_invariants(redis, P)


async def test_a_hand_over_is_taken_in_one_call_by_free_slots(rig: Rig, redis: Redis, committer: Committer) -> None:
    """Defect 11: four runs handed over from one partition went one per partition per scan."""
    workflow = await seed_workflow(committer, TENANT, GATED)
    leaving, staying = await rig.start_node(slots=4), await rig.start_node(slots=4)
    ids = await _queue(committer, workflow, GATED, count=4)
    await leaving.dispatch()
    await rig.settle()
    leaving.sigterm()
    await leaving.hand_over()
    await staying.take_expired()
    await rig.settle()
    assert sorted(rig.gate.waiting()) == sorted(ids)
    await check_invariants(redis, P)


async def test_a_stale_executor_cannot_log(rig: Rig, redis: Redis, committer: Committer) -> None:
    """Defect 12: logs and progress of a run that was taken over are refused."""
    workflow = await seed_workflow(committer, TENANT, GATED)
    stale, taker = await rig.start_node(), await rig.start_node()
    [execution_id] = await _queue(committer, workflow, GATED)
    await stale.dispatch()
    await rig.settle()
    _, stale_run = stale.executor._running[execution_id]
    await rig.expire(stale)
    await taker.take_expired()
    await rig.settle()
    context = StepContext(stale_run, 0)
    await context.log("from the past")
    await context.progress(50)
    await stale.committer.close()
    types = await _types(redis, execution_id)
    assert "execution.log" not in types and "execution.progress" not in types


class LosingReplies(Committer):
    """Redis applies the commit, then the connection drops before its reply (a master killed mid-call): the
    caller sees a connection error for a commit that took effect. Once, for the first unit ``lose`` picks."""

    def __init__(self, redis: Redis, lose: Callable[[Unit], bool]) -> None:
        super().__init__(redis, libraries=commit_script.COMMIT_LIBRARIES)
        self._lose: Callable[[Unit], bool] | None = lose

    async def commit(self, unit: Unit) -> Outcome:
        outcome = await super().commit(unit)
        if self._lose is not None and self._lose(unit):
            self._lose = None
            raise RedisConnectionError("connection closed before the reply")
        return outcome


def _completes(unit: Unit) -> bool:
    return any(op[0] == "log" and op[2] == "execution.completed" for op in unit.ops)


async def test_a_commit_sent_again_after_its_reply_was_lost_applies_once(
        rig: Rig, redis: Redis, committer: Committer) -> None:
    """A run sends a commit again when Redis did not answer; if the first send was applied, the ``seq`` guard
    refuses the second, and the run takes that as done: one completion, no crash, nothing taken over."""
    workflow = await seed_workflow(committer, TENANT, GATED)
    node = await rig.start_node(committer=LosingReplies(redis, _completes))
    [execution_id] = await _queue(committer, workflow, GATED)
    await node.dispatch()
    await rig.settle()
    rig.gate.open(execution_id, ok=True)
    await rig.settle()
    state = await status(redis, TENANT, execution_id)
    assert state["status"] == "completed" and state.get("crash_count", "0") == "0"
    assert (await _types(redis, execution_id)).count("execution.completed") == 1
    assert not node.executor._running
    await check_invariants(redis, P)
