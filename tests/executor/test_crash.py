"""``kill -9`` of an executor process mid-run: another executor finishes every execution."""

from __future__ import annotations

from pathlib import Path

import pytest
from redis.asyncio import Redis

from shared.domain import commit_script
from shared.log import keys
from shared.log.events import ExecutionRecovered
from shared.log.workflows import StepDef, WorkflowDef
from tests.executor.seed import PARTITIONS, events_of, queue, seed_workflow, status
from tests.helpers import REDIS_URL, assert_eventually
from tests.processes import OrqProcess, orq_env, orq_processes

TENANT = "tenant-crash"
pytestmark = pytest.mark.slow


async def test_killed_executor_work_is_finished_by_another(redis: Redis, tmp_path: Path) -> None:
    committer = commit_script.committer(redis)
    definition = WorkflowDef(name="long", steps=[
        StepDef(action="set", params={"values": {"a": 1}}),
        StepDef(action="delay", params={"ms": 1500}),
        StepDef(action="noop"),
    ])
    workflow = await seed_workflow(committer, TENANT, definition)
    env = orq_env(ORQ_REDIS_URL=REDIS_URL, ORQ_PARTITIONS=str(PARTITIONS), ORQ_LEASE_SECONDS="2",
                  ORQ_EXECUTOR_CONCURRENCY="10")
    with orq_processes() as procs:
        victim = OrqProcess(["executor"], env, tmp_path / "victim.log")
        procs.append(victim)
        ids = await queue(committer, workflow, definition, count=6)

        async def all_running() -> bool:
            states = [await status(redis, TENANT, i) for i in ids]
            return all(s.get("status") == "running" for s in states)

        await assert_eventually(all_running, timeout=15, message="the victim took every execution")
        victim.kill9()
        survivor = OrqProcess(["executor"], env, tmp_path / "survivor.log")
        procs.append(survivor)

        async def all_completed() -> bool:
            states = [await status(redis, TENANT, i) for i in ids]
            return all(s.get("status") == "completed" for s in states)

        await assert_eventually(all_completed, timeout=30, message="survivor finished every execution")
    for execution_id in ids:
        state = await status(redis, TENANT, execution_id)
        assert state["crash_count"] == "1"
        assert state["retry_count"] == "0", "a crash is not a failed attempt"
        recovered = [e for e in await events_of(redis, TENANT, execution_id) if isinstance(e, ExecutionRecovered)]
        assert len(recovered) == 1 and recovered[0].crash_count == 1
    p = keys.partition_of(TENANT, PARTITIONS)
    assert (await redis.xinfo_groups(keys.work(p, 5)))[0]["pending"] == 0
    await committer.close()
