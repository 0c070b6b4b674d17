"""Drill: ``kill -9`` in a loop on executors (and once on the projector) while executions run.

Two executors run a backlog; three times the busiest one is killed and a fresh one started; the projector is
killed mid-run once and restarted. Every execution must complete exactly once, steps repeated only across the
kills, and the SQL projection must equal the log.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pytest
from redis.asyncio import Redis

from shared.domain import commit_script
from shared.log.events import ExecutionRecovered
from shared.log.workflows import StepDef, WorkflowDef
from shared.readmodel.db import create_engine
from tests.drills.fleet import drill_env, fleet, pid_of
from tests.drills.ledger import (
    assert_kept_promises,
    assert_projection_equals_log,
    assert_released,
    crashed_pids,
    histories,
    holder,
    wait_finished,
)
from tests.executor.seed import queue, seed_workflow
from tests.helpers import REDIS_URL, assert_eventually
from tests.processes import OrqProcess

pytestmark = pytest.mark.slow

TENANT = "tenant-drill-kills"
LEASE_S = 2
ROUNDS = 3
EXECUTIONS = 16
# Long enough steps that each kill lands mid-step; short enough that the backlog drains in seconds.
DEFINITION = WorkflowDef(name="kills", steps=[
    StepDef(action="set", params={"values": {"a": 1}}),
    StepDef(action="delay", params={"ms": 1200}),
    StepDef(action="log", params={"message": "half way"}),
    StepDef(action="delay", params={"ms": 600}),
])


async def busiest(redis: Redis, ids: Sequence[str], executors: Sequence[OrqProcess]) -> OrqProcess:
    """The live executor running the most executions now (by the log), once one runs any."""
    async def pick() -> OrqProcess:
        held = Counter(pid_of(h) for h in map(holder, (await histories(redis, ids)).values()) if h)
        candidates = [e for e in executors if held[e.pid]]
        assert candidates, f"no live executor runs an execution (runs per pid: {dict(held)})"
        return max(candidates, key=lambda e: held[e.pid])

    return await assert_eventually(pick, timeout=15, interval=0.1, message="an executor to kill")


async def test_kill_9_loops_on_executors_and_projector_lose_and_repeat_nothing(redis: Redis, tmp_path: Path) -> None:
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'orq.db'}"
    # ORQ_MAX_CRASHES above the kills: a run caught by every kill must still complete, not turn poison.
    env = drill_env(REDIS_URL, ORQ_DATABASE_URL=database_url, ORQ_LEASE_SECONDS=str(LEASE_S),
                    ORQ_EXECUTOR_CONCURRENCY="3", ORQ_MAX_CRASHES="10", ORQ_SHUTDOWN_GRACE_SECONDS="1")
    committer = commit_script.committer(redis)
    engine = create_engine(database_url)
    try:
        workflow = await seed_workflow(committer, TENANT, DEFINITION)
        with fleet(env, tmp_path) as crew:
            executors = [await crew.executor("executor-0"), await crew.executor("executor-1")]
            projector = await crew.projector("projector-0")
            ids = await queue(committer, workflow, DEFINITION, count=EXECUTIONS)
            killed: list[int] = []
            for n in range(ROUNDS):
                victim = await busiest(redis, ids, executors)
                victim.kill9()
                killed.append(victim.pid)
                executors.remove(victim)
                if n == 0:  # mid-run: its batch in flight must be neither lost nor applied twice
                    projector.kill9()
                    projector = await crew.projector("projector-1")
                executors.append(await crew.executor(f"executor-{n + 2}"))

            await wait_finished(redis, TENANT, ids, timeout=60, why="the survivors finish every execution")
            await assert_kept_promises(redis, TENANT, ids, steps=len(DEFINITION.steps),
                                       real_crash=crashed_pids(killed))
            recovered_from = {pid_of(e.lost_executor) for events in (await histories(redis, ids)).values()
                              for e in events if isinstance(e, ExecutionRecovered)}
            assert set(killed) <= recovered_from, "every kill orphaned a run that another executor recovered"
            await assert_released(redis, TENANT, timeout=10)
            await assert_projection_equals_log(redis, engine, TENANT, ids)
    finally:
        await engine.dispose()
        await committer.close()
