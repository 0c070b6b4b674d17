"""The executor against a real Redis: steps, retries with backoff, the DLQ, cancel, priority."""

from __future__ import annotations

from redis.asyncio import Redis

from shared.domain.aggregates import Status
from shared.domain.executions.commands import cancel_unit
from shared.log import keys
from shared.log.commit import Applied, Committer
from shared.log.events import ExecutionRetrying, ExecutionStarted, StepCompleted, StepStarted
from shared.log.workflows import Backoff, RetryPolicy, StepDef, WorkflowDef
from tests.executor.seed import PARTITIONS, events_of, queue, seed_workflow, status
from tests.helpers import assert_eventually

TENANT = "tenant-exec"


async def wait_status(redis: Redis, execution_id: str, wanted: str, timeout: float = 10) -> dict[str, str]:
    async def check() -> dict[str, str]:
        state = await status(redis, TENANT, execution_id)
        assert state.get("status") == wanted, state.get("status")
        return state

    return await assert_eventually(check, timeout=timeout, message=f"{execution_id} {wanted}")


async def test_steps_run_in_order_with_templates(redis: Redis, committer: Committer, start_executor) -> None:
    definition = WorkflowDef(name="three", steps=[
        StepDef(action="set", params={"values": {"greeting": "hello {{ params.name }}", "n": "{{ params.n }}"}}),
        StepDef(action="log", params={"message": "{{ steps.0.output.greeting }}"}),
        StepDef(action="set", params={"values": {"doubled": "{{ steps.0.output.n }}"}}),
    ])
    workflow = await seed_workflow(committer, TENANT, definition)
    [execution_id] = await queue(committer, workflow, definition, params={"name": "ana", "n": 7})
    start_executor()
    await wait_status(redis, execution_id, "completed")
    events = await events_of(redis, TENANT, execution_id)
    steps = [(type(e).__name__, e.step_index) for e in events if isinstance(e, StepStarted | StepCompleted)]
    assert steps == [("StepStarted", 0), ("StepCompleted", 0), ("StepStarted", 1), ("StepCompleted", 1),
                     ("StepStarted", 2), ("StepCompleted", 2)]
    outputs = [e.output for e in events if isinstance(e, StepCompleted)]
    assert outputs[0] == {"greeting": "hello ana", "n": 7}
    assert outputs[2] == {"doubled": 7}
    p = keys.partition_of(TENANT, PARTITIONS)
    assert await redis.xlen(keys.work(p, 5)) == 0, "completed work entries are deleted"


async def test_fails_twice_then_passes_with_exponential_backoff(redis: Redis, committer: Committer,
                                                                start_executor) -> None:
    delay = 300
    definition = WorkflowDef(name="flaky", steps=[
        StepDef(action="set", params={"values": {"x": 1}}),
        StepDef(action="fail", params={"until_attempt": 3}),
    ], retry=RetryPolicy(attempts=3, backoff=Backoff(type="exponential", delay_ms=delay)))
    workflow = await seed_workflow(committer, TENANT, definition)
    [execution_id] = await queue(committer, workflow, definition)
    start_executor()
    state = await wait_status(redis, execution_id, "completed")
    assert state["retry_count"] == "2"
    events = await events_of(redis, TENANT, execution_id)
    starts = [e for e in events if isinstance(e, ExecutionStarted)]
    assert [s.attempt for s in starts] == [1, 2, 3]
    assert [s.from_step for s in starts] == [0, 1, 1], "retries resume from the failed step"
    retries = [e for e in events if isinstance(e, ExecutionRetrying)]
    assert [r.delay_ms for r in retries] == [delay, delay * 2]
    for n, (before, after) in enumerate(zip(starts, starts[1:], strict=False), start=1):
        assert after.ts - before.ts >= delay * 2 ** (n - 1), f"attempt {n + 1} came too early"
    assert sum(isinstance(e, StepStarted) and e.step_index == 0 for e in events) == 1, "step 0 ran once"


async def test_always_failing_goes_to_the_dlq(redis: Redis, committer: Committer, start_executor) -> None:
    definition = WorkflowDef(name="doomed", steps=[StepDef(action="fail", params={"message": "boom"})],
                             retry=RetryPolicy(attempts=2, backoff=Backoff(type="fixed", delay_ms=50)))
    workflow = await seed_workflow(committer, TENANT, definition)
    [execution_id] = await queue(committer, workflow, definition)
    start_executor()
    state = await wait_status(redis, execution_id, "failed")
    assert state["dead_lettered"] == "1"
    p = keys.partition_of(TENANT, PARTITIONS)
    dlq = await redis.xrange(keys.dlq(p))
    assert [fields[b"e"].decode() for _, fields in dlq] == [execution_id]
    assert dlq[0][1][b"error"] == b"boom"
    groups = await redis.xinfo_groups(keys.work(p, 5))
    assert groups[0]["pending"] == 0, "the dead-lettered entry is acked"


async def test_cancel_running_stops_the_step(redis: Redis, committer: Committer, start_executor) -> None:
    definition = WorkflowDef(name="slow", steps=[StepDef(action="delay", params={"ms": 30_000}),
                                                 StepDef(action="noop")])
    workflow = await seed_workflow(committer, TENANT, definition)
    [execution_id] = await queue(committer, workflow, definition)
    start_executor()
    await wait_status(redis, execution_id, "running")
    await assert_eventually(lambda: _has_step_started(redis, execution_id), message="step started")
    p = keys.partition_of(TENANT, PARTITIONS)
    outcome = await committer.commit(cancel_unit(p=p, tenant_id=TENANT, execution_id=execution_id,
                                                 observed=Status.RUNNING, now_ms=0))
    assert isinstance(outcome, Applied)

    async def acked() -> bool:
        return (await redis.xinfo_groups(keys.work(p, 5)))[0]["pending"] == 0

    await assert_eventually(acked, timeout=5, message="cancelled run acked")
    events = await events_of(redis, TENANT, execution_id)
    assert not any(isinstance(e, StepCompleted) for e in events)
    assert (await status(redis, TENANT, execution_id))["status"] == "cancelled"


async def _has_step_started(redis: Redis, execution_id: str) -> bool:
    return any(isinstance(e, StepStarted) for e in await events_of(redis, TENANT, execution_id))


async def test_cancel_queued_never_runs(redis: Redis, committer: Committer, start_executor) -> None:
    definition = WorkflowDef(name="never", steps=[StepDef(action="noop")])
    workflow = await seed_workflow(committer, TENANT, definition)
    [execution_id] = await queue(committer, workflow, definition)
    p = keys.partition_of(TENANT, PARTITIONS)
    await committer.commit(cancel_unit(p=p, tenant_id=TENANT, execution_id=execution_id,
                                       observed=Status.QUEUED, now_ms=0))
    [later] = await queue(committer, workflow, definition)
    start_executor()
    await wait_status(redis, later, "completed")
    assert not any(isinstance(e, ExecutionStarted) for e in await events_of(redis, TENANT, execution_id))


async def test_higher_priority_runs_first_with_one_slot(redis: Redis, committer: Committer,
                                                        start_executor) -> None:
    definition = WorkflowDef(name="p", steps=[StepDef(action="delay", params={"ms": 5})])
    workflow = await seed_workflow(committer, TENANT, definition)
    low = await queue(committer, workflow, definition, count=20, priority=9)
    [urgent] = await queue(committer, workflow, definition, priority=1)
    start_executor(executor_concurrency=1)
    await wait_status(redis, urgent, "completed")
    p = keys.partition_of(TENANT, PARTITIONS)
    starts = [r for r in await redis.xrange(keys.log(p)) if r[1][b"t"] == b"execution.started"]
    from shared.log.consumer import records_of

    first = records_of(starts)[0].event()
    assert first.aggregate_id == urgent
    assert len(low) == 20


async def test_step_timeout_and_continue_on_error(redis: Redis, committer: Committer, start_executor) -> None:
    definition = WorkflowDef(name="t", steps=[
        StepDef(action="delay", params={"ms": 5_000}, timeout_s=0.1, on_error="continue"),
        StepDef(action="set", params={"values": {"after": True}}),
    ], retry=RetryPolicy(attempts=1))
    workflow = await seed_workflow(committer, TENANT, definition)
    [execution_id] = await queue(committer, workflow, definition)
    start_executor()
    await wait_status(redis, execution_id, "completed")
    events = await events_of(redis, TENANT, execution_id)
    failed = [e for e in events if type(e).__name__ == "StepFailed"]
    assert failed and "timed out" in failed[0].error and failed[0].continued
