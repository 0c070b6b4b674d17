"""Drill: Redis killed (``kill -9``) and restarted mid-run, with ``appendonly yes`` and ``appendfsync always``.

Every write Redis answered is on disk, so every execution accepted before the crash must come back and reach
exactly one terminal state, run by the two executors that rode the outage out (neither is restarted); and
executions accepted after the restart run as usual.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from shared.domain import commit_script
from shared.log.redis import connect
from shared.log.workflows import StepDef, WorkflowDef
from tests.drills.fleet import drill_env, fleet
from tests.drills.ledger import assert_kept_promises, assert_released, histories, holder, outcomes, wait_finished
from tests.drills.servers import PrivateRedis
from tests.executor.seed import queue, seed_workflow
from tests.helpers import assert_eventually

pytestmark = pytest.mark.slow

TENANT = "tenant-drill-redis-restart"
LEASE_S = 2
DOWN_S = 1.0  # Redis stays down this long: every running run has a commit due meanwhile
DEFINITION = WorkflowDef(name="restart", steps=[
    StepDef(action="delay", params={"ms": 400}),
    StepDef(action="delay", params={"ms": 400}),
    StepDef(action="delay", params={"ms": 400}),
])


async def test_redis_kill_and_restart_mid_run_loses_no_accepted_execution(
    private_redis: PrivateRedis, tmp_path: Path
) -> None:
    env = drill_env(private_redis.url, ORQ_LEASE_SECONDS=str(LEASE_S), ORQ_EXECUTOR_CONCURRENCY="3",
                    ORQ_SHUTDOWN_GRACE_SECONDS="1")
    redis = connect(private_redis.url)
    committer = commit_script.committer(redis)
    try:
        workflow = await seed_workflow(committer, TENANT, DEFINITION)
        with fleet(env, tmp_path) as crew:
            await crew.executor("executor-0")
            await crew.executor("executor-1")
            before = await queue(committer, workflow, DEFINITION, count=12)

            async def mid_run() -> None:
                found = (await histories(redis, before)).values()
                assert any(outcomes(events) for events in found), "one has completed"
                assert any(holder(events) for events in found), "one is running"

            await assert_eventually(mid_run, timeout=20, message="mid-run")
            private_redis.kill9()
            await asyncio.sleep(DOWN_S)
            await private_redis.start()
            # The test's own pooled connections died with the server: start afresh (the executors must cope
            # on their own, and are not touched).
            await committer.close()
            await redis.aclose()
            redis = connect(private_redis.url)
            committer = commit_script.committer(redis)

            after = await queue(committer, workflow, DEFINITION, count=3)
            ids = before + after
            await wait_finished(redis, TENANT, ids, timeout=40, why="every accepted execution finishes")
            await assert_kept_promises(redis, TENANT, ids, steps=len(DEFINITION.steps))
            await assert_released(redis, TENANT, timeout=10)
    finally:
        await committer.close()
        await redis.aclose()
