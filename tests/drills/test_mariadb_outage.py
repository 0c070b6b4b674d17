"""Drill: the projector's MariaDB hangs (SIGSTOP) for a few seconds, then dies (``kill -9``) and restarts.

Executions keep running throughout (executors never touch SQL). The projector, never restarted, must wait out
the hang, reconnect after the crash and catch up: the projection then equals the log, with no row missing or
doubled and every event archived once, whatever transaction the crash cut short.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from redis.asyncio import Redis

from shared.domain import commit_script
from shared.log.workflows import StepDef, WorkflowDef
from shared.readmodel.db import create_engine
from tests.drills.fleet import drill_env, fleet
from tests.drills.ledger import (
    assert_kept_promises,
    assert_projection_equals_log,
    assert_released,
    crashed_pids,
    wait_finished,
)
from tests.drills.servers import PrivateMariaDB
from tests.executor.seed import PARTITIONS, queue, seed_workflow
from tests.helpers import REDIS_URL
from tests.projector.helpers import caught_up

pytestmark = [pytest.mark.slow, pytest.mark.mysql]

TENANT = "tenant-drill-mariadb"
BATCH = 5
STALL_S = 3.0  # MariaDB hangs this long, with the projector's connection open
DOWN_S = 1.0  # and is down this long after the kill
DEFINITION = WorkflowDef(name="outage", steps=[
    StepDef(action="set", params={"values": {"n": 1}}),
    StepDef(action="log", params={"message": "projected as a log row"}),
    StepDef(action="delay", params={"ms": 200}),
    StepDef(action="noop"),
])


async def test_projector_catches_up_after_mariadb_stalls_and_dies(
    redis: Redis, private_mariadb: PrivateMariaDB, tmp_path: Path
) -> None:
    database_url = private_mariadb.url("orq")
    # Small projector batches: many transactions, so the kill is likely to cut one short.
    env = drill_env(REDIS_URL, ORQ_DATABASE_URL=database_url, ORQ_LEASE_SECONDS="2",
                    ORQ_SHUTDOWN_GRACE_SECONDS="1", ORQ_PROJECTOR_BATCH="10")
    committer = commit_script.committer(redis)
    engine = create_engine(database_url)
    try:
        workflow = await seed_workflow(committer, TENANT, DEFINITION)
        with fleet(env, tmp_path) as crew:
            await crew.executor("executor")
            await crew.projector("projector")
            ids = await queue(committer, workflow, DEFINITION, count=BATCH)
            await wait_finished(redis, TENANT, ids, timeout=20, why="the first batch finishes")
            await caught_up(redis, engine, PARTITIONS, timeout=30)  # the projector works before the faults

            private_mariadb.pause()
            ids += await queue(committer, workflow, DEFINITION, count=BATCH)
            await asyncio.sleep(STALL_S)
            private_mariadb.resume()
            ids += await queue(committer, workflow, DEFINITION, count=BATCH)
            await asyncio.sleep(0.2)  # the projector is now busy with the backlog of the stall
            private_mariadb.kill9()
            await asyncio.sleep(DOWN_S)
            await private_mariadb.start()
            await engine.dispose()  # the test's own pooled connections died with the server

            await wait_finished(redis, TENANT, ids, timeout=30, why="every execution finishes")
            # No executor crashed: no run may have been recovered or run a step twice.
            await assert_kept_promises(redis, TENANT, ids, steps=len(DEFINITION.steps), real_crash=crashed_pids([]))
            await assert_released(redis, TENANT, timeout=10)
            await assert_projection_equals_log(redis, engine, TENANT, ids, timeout=60)
    finally:
        await engine.dispose()
        await committer.close()
