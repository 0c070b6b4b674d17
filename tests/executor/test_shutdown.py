"""SIGTERM: the executor finishes the step in hand, then hands the execution over at once (not after a lease)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from redis.asyncio import Redis

from shared.domain import commit_script
from shared.log.events import ExecutionStarted, StepCompleted
from shared.log.workflows import StepDef, WorkflowDef
from tests.executor.seed import PARTITIONS, events_of, queue, seed_workflow, status
from tests.helpers import REDIS_URL, assert_eventually
from tests.processes import OrqProcess, orq_env, orq_processes

TENANT = "tenant-shutdown"
pytestmark = pytest.mark.slow


async def test_sigterm_hands_the_run_over_between_steps(redis: Redis, tmp_path: Path) -> None:
    committer = commit_script.committer(redis)
    definition = WorkflowDef(name="three", steps=[
        StepDef(action="delay", params={"ms": 1500}),
        StepDef(action="set", params={"values": {"two": 2}}),
        StepDef(action="noop"),
    ])
    workflow = await seed_workflow(committer, TENANT, definition)
    lease_s = 60  # a hand-over that waited for the lease would blow the test's timeout
    env = orq_env(ORQ_REDIS_URL=REDIS_URL, ORQ_PARTITIONS=str(PARTITIONS), ORQ_LEASE_SECONDS=str(lease_s))
    with orq_processes() as procs:
        first = OrqProcess(["executor"], env, tmp_path / "first.log")
        procs.append(first)
        second = OrqProcess(["executor"], env, tmp_path / "second.log")
        procs.append(second)
        async def both_up() -> bool:
            return all("started with" in p.output() for p in (first, second))

        await assert_eventually(both_up, timeout=15, message="both executors up")
        [execution_id] = await queue(committer, workflow, definition)

        async def running() -> bool:
            return (await status(redis, TENANT, execution_id)).get("status") == "running"

        await assert_eventually(running, timeout=15, message="running")
        owner = (await status(redis, TENANT, execution_id))["owner"]
        victim = first if f":{first.pid}:" in owner else second
        sent = time.monotonic()
        assert victim.terminate(timeout=30) == 0, victim.output()

        async def completed() -> bool:
            return (await status(redis, TENANT, execution_id)).get("status") == "completed"

        await assert_eventually(completed, timeout=20, message="completed by the other executor")
        assert time.monotonic() - sent < lease_s / 2, "handed over at once, not after the lease"
    events = await events_of(redis, TENANT, execution_id)
    starts = [e for e in events if isinstance(e, ExecutionStarted)]
    assert len(starts) == 2 and starts[0].executor != starts[1].executor
    assert starts[1].from_step == 1, "the step in hand finished before the hand-over"
    assert [e.step_index for e in events if isinstance(e, StepCompleted)] == [0, 1, 2]
    state = await status(redis, TENANT, execution_id)
    assert state["crash_count"] == "0" and state["retry_count"] == "0"
    await committer.close()

