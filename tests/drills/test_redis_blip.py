"""Drill: a Redis blip (killed and back a second later) under a single executor, as in ``orq dev``.

Runs whose commits hit the dropped connections lose their Redis round trip, not their executor: the same
executor must pick them up again (no other executor exists to do it) within a couple of leases, and every
execution completes without restarting anything. Afterwards the executor must still hear cancels: a cancel
interrupts a step in hand instead of waiting for it to end.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from redis.asyncio import Redis

from shared.domain import commit_script
from shared.domain.aggregates import Status
from shared.domain.executions.commands import cancel_unit
from shared.infra.clock import now_ms
from shared.log import keys
from shared.log.commit import Applied, Committer
from shared.log.redis import connect
from shared.log.workflows import StepDef, WorkflowDef
from tests.drills.fleet import drill_env, fleet
from tests.drills.ledger import assert_kept_promises, assert_released, histories, holder, wait_finished
from tests.drills.servers import PrivateRedis
from tests.executor.seed import PARTITIONS, queue, seed_workflow
from tests.helpers import assert_eventually

pytestmark = pytest.mark.slow

TENANT = "tenant-drill-blip"
LEASE_S = 2
DOWN_S = 1.0  # longer than a step: every run in hand has a commit due while Redis is away
# Short steps, so each running run commits several times a second and some commit meets the outage.
DEFINITION = WorkflowDef(name="blip", steps=[StepDef(action="delay", params={"ms": 250}) for _ in range(6)])
LONG_STEP_MS = 60_000  # a cancel that is not heard leaves this step running for a minute
LONG = WorkflowDef(name="long", steps=[StepDef(action="delay", params={"ms": LONG_STEP_MS}), StepDef(action="noop")])
QUICK = WorkflowDef(name="quick", steps=[StepDef(action="noop")])


async def blip(server: PrivateRedis) -> None:
    server.kill9()
    await asyncio.sleep(DOWN_S)
    await server.start()


async def test_single_executor_rides_out_a_redis_blip(private_redis: PrivateRedis, tmp_path: Path) -> None:
    env = drill_env(private_redis.url, ORQ_LEASE_SECONDS=str(LEASE_S), ORQ_EXECUTOR_CONCURRENCY="5",
                    ORQ_SHUTDOWN_GRACE_SECONDS="1")
    redis = connect(private_redis.url)
    committer = commit_script.committer(redis)
    try:
        with fleet(env, tmp_path) as crew:
            await crew.executor("executor")
            workflow = await seed_workflow(committer, TENANT, DEFINITION)
            ids = await queue(committer, workflow, DEFINITION, count=6)

            async def several_running() -> None:
                found = (await histories(redis, ids)).values()
                assert sum(1 for events in found if holder(events)) >= 3, "three running"

            await assert_eventually(several_running, timeout=20, message="runs in hand")
            await blip(private_redis)
            # The test's own pooled connections died with the server; the executor is left alone.
            await committer.close()
            await redis.aclose()
            redis = connect(private_redis.url)
            committer = commit_script.committer(redis)

            # Bounded, not fast: 2 leases to notice an orphaned entry, the runs themselves, and slack for a
            # loaded machine. An entry nobody reclaims stays "running" for good and fails this.
            await wait_finished(redis, TENANT, ids, timeout=4 * LEASE_S + 10,
                                why="every execution finishes, orphaned ones reclaimed by the same executor")
            await assert_kept_promises(redis, TENANT, ids, steps=len(DEFINITION.steps))
            await assert_released(redis, TENANT, timeout=10)
    finally:
        await committer.close()
        await redis.aclose()


async def test_cancels_are_heard_after_a_redis_blip(private_redis: PrivateRedis, tmp_path: Path) -> None:
    """After a blip the executor listens for cancels again, and a cancel stops the step in hand: the executor's
    only slot is free for the next run long before the cancelled step would have ended."""
    env = drill_env(private_redis.url, ORQ_LEASE_SECONDS=str(LEASE_S), ORQ_EXECUTOR_CONCURRENCY="1",
                    ORQ_SHUTDOWN_GRACE_SECONDS="1")
    redis = connect(private_redis.url)
    try:
        with fleet(env, tmp_path) as crew:
            await crew.executor("executor")
            await blip(private_redis)
            await redis.aclose()  # its pooled connections died with the server
            redis = connect(private_redis.url)
            committer = commit_script.committer(redis)
            try:
                await cancel_a_long_step(redis, committer)
            finally:
                await committer.close()
    finally:
        await redis.aclose()


async def cancel_a_long_step(redis: Redis, committer: Committer) -> None:
    p = keys.partition_of(TENANT, PARTITIONS)

    async def listening() -> None:
        [(_, listeners)] = await redis.pubsub_numsub(keys.cancel_channel(p))
        assert listeners >= 1, "no executor subscribed to cancel notices"

    await assert_eventually(listening, timeout=3 * LEASE_S, message="the executor listens for cancels again")
    long_workflow = await seed_workflow(committer, TENANT, LONG)
    [long_id] = await queue(committer, long_workflow, LONG)

    async def running() -> None:
        assert holder((await histories(redis, [long_id]))[long_id]), "running"

    await assert_eventually(running, timeout=20, message="the long run started")
    cancelled = await committer.commit(cancel_unit(p=p, tenant_id=TENANT, execution_id=long_id,
                                                   observed=Status.RUNNING, now_ms=now_ms()))
    assert isinstance(cancelled, Applied), cancelled
    quick_workflow = await seed_workflow(committer, TENANT, QUICK)
    [next_id] = await queue(committer, quick_workflow, QUICK)
    # 3 leases is far below the step's minute: only an interrupted step frees the single slot in time.
    await wait_finished(redis, TENANT, [next_id], timeout=3 * LEASE_S,
                        why="the next run gets the slot: the cancelled step was interrupted")
    await assert_kept_promises(redis, TENANT, [long_id], steps=len(LONG.steps), outcome="cancelled")
    await assert_released(redis, TENANT, timeout=3 * LEASE_S)
