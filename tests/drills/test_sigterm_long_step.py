"""Drill: SIGTERM to an executor in the middle of a step three leases long (a rolling deploy).

The grace period exceeds the step, so the draining executor must finish the step in hand, keeping its lease
alive meanwhile, and only then hand the run over. The other executor must not start the step a second time,
and nothing about a clean shutdown is a crash (``crash_count`` stays 0).
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from redis.asyncio import Redis

from shared.domain import commit_script
from shared.log.events import ExecutionRecovered, ExecutionStarted, StepCompleted, StepStarted
from shared.log.workflows import StepDef, WorkflowDef
from tests.drills.fleet import drill_env, fleet, pid_of
from tests.drills.ledger import assert_kept_promises, assert_released, crashed_pids, histories, holder, wait_finished
from tests.executor.seed import queue, seed_workflow, status
from tests.helpers import REDIS_URL, assert_eventually

pytestmark = pytest.mark.slow

TENANT = "tenant-drill-sigterm"
LEASE_S = 1
STEP_MS = 3_000 * LEASE_S  # three leases: a lease left unrenewed during the step expires twice over
GRACE_S = 10  # longer than the step: the step in hand must be let finish
RUNS = 2
DEFINITION = WorkflowDef(name="deploy", steps=[
    StepDef(action="delay", params={"ms": STEP_MS}),
    StepDef(action="noop"),
])


async def test_sigterm_mid_step_finishes_the_step_once_without_a_takeover(redis: Redis, tmp_path: Path) -> None:
    env = drill_env(REDIS_URL, ORQ_LEASE_SECONDS=str(LEASE_S), ORQ_SHUTDOWN_GRACE_SECONDS=str(GRACE_S),
                    ORQ_EXECUTOR_CONCURRENCY="2")
    committer = commit_script.committer(redis)
    try:
        workflow = await seed_workflow(committer, TENANT, DEFINITION)
        with fleet(env, tmp_path) as crew:
            draining = await crew.executor("draining")
            ids = await queue(committer, workflow, DEFINITION, count=RUNS)

            async def both_in_the_long_step() -> None:
                for events in (await histories(redis, ids)).values():
                    current = holder(events)
                    assert current is not None and pid_of(current) == draining.pid, "run by `draining`"
                    assert any(isinstance(e, StepStarted) and e.step_index == 0 for e in events), "step started"
                    assert not any(isinstance(e, StepCompleted) for e in events), "step not over yet"

            await assert_eventually(both_in_the_long_step, timeout=15, message="both runs in the long step")
            await crew.executor("successor")  # up and idle, eager to take over anything left unrenewed
            await both_in_the_long_step()  # else the drill proves nothing: the signal must land mid-step
            draining.process.send_signal(signal.SIGTERM)

            async def exited() -> None:
                assert draining.process.poll() is not None, "still draining"

            await assert_eventually(exited, timeout=GRACE_S + 10, interval=0.1, message="the draining executor exits")
            assert draining.process.returncode == 0, draining.output()
            await wait_finished(redis, TENANT, ids, timeout=20, why="the successor finishes the runs")

            # No executor was killed: no recovery is legitimate, and no step may run twice.
            await assert_kept_promises(redis, TENANT, ids, steps=len(DEFINITION.steps), real_crash=crashed_pids([]))
            for execution_id, events in (await histories(redis, ids)).items():
                assert not [e for e in events if isinstance(e, ExecutionRecovered)], "a shutdown is not a crash"
                long_step = [e for e in events if isinstance(e, StepStarted) and e.step_index == 0]
                assert len(long_step) == 1, f"{execution_id}: the long step started {len(long_step)} times"
                assert (await status(redis, TENANT, execution_id)).get("crash_count", "0") == "0"
                resumed = [e for e in events if isinstance(e, ExecutionStarted)][1:]
                assert all(e.from_step >= 1 for e in resumed), (
                    f"{execution_id}: resumed in the long step, not after it: {resumed}")
            await assert_released(redis, TENANT, timeout=10)
    finally:
        await committer.close()
