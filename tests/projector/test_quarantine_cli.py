"""``orq quarantine list|retry`` as an operator uses them: a real ``orq`` process against real Redis and SQL.

The poison is a database-side refusal an operator can fix: triggers refuse step rows whose output holds a
marker, and dropping them is "the fix". Retry goes through the projector holding the partition when one
runs, and is applied by the command itself (under the partition lock) when none does.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from redis.asyncio import Redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.projector.replay import replay
from shared.infra.settings import Settings
from shared.readmodel import schema
from tests.helpers import REDIS_URL
from tests.processes import ROOT, orq_env
from tests.projector.factories import append, fold, snapshot, stream_events
from tests.projector.helpers import caught_up, projector, running
from tests.projector.poison import (
    PARTITIONS,
    POISON_MARK,
    accept_poisoned_steps,
    archived_ids,
    exec_id,
    interleave,
    quarantined,
    refuse_poisoned_steps,
    run,
    same_partition_tenants,
    tenant_setup,
    timed,
)


async def orq(database_url: str, *args: str) -> tuple[int, str, str]:
    env = orq_env(ORQ_REDIS_URL=REDIS_URL, ORQ_DATABASE_URL=database_url, ORQ_PARTITIONS=str(PARTITIONS))
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "orquesta", *args, env=env, cwd=ROOT,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=90)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def poisoned_history(poisoned: str, healthy: str) -> list[Any]:
    return interleave(
        tenant_setup(healthy) + run(healthy, exec_id(healthy, 1)) + run(healthy, exec_id(healthy, 2)),
        tenant_setup(poisoned) + run(poisoned, exec_id(poisoned, 1), output={"x": POISON_MARK})
        + run(poisoned, exec_id(poisoned, 2)),
    )


async def step_output(engine: AsyncEngine, execution_id: str, index: int) -> Any:
    t = schema.execution_steps
    async with engine.connect() as conn:
        return (await conn.execute(select(t.c.output_data).where(t.c.execution_id == execution_id,
                                                                 t.c.step_index == index))).scalar_one()


async def test_list_and_retry_while_a_projector_runs(redis: Redis, engine: AsyncEngine, database_url: str) -> None:
    poisoned, healthy = same_partition_tenants(2)
    await refuse_poisoned_steps(engine)
    history = poisoned_history(poisoned, healthy)
    await append(redis, history, PARTITIONS)
    async with running(projector(redis, engine, PARTITIONS, batch=500)):
        await caught_up(redis, engine, PARTITIONS, timeout=20)
        [entry] = await quarantined(engine)
        stream_id = entry["stream_id"]

        code, out, err = await orq(database_url, "quarantine", "list")
        assert code == 0, err
        assert stream_id in out and "step.completed" in out and poisoned in out and "poisoned step output" in out
        code, out, err = await orq(database_url, "quarantine", "list", "--json")
        [listed] = [json.loads(line) for line in out.splitlines()]
        assert {k: listed[k] for k in ("partition", "stream_id", "type", "tenant_id", "aggregate_id", "retries")} == {
            "partition": 0, "stream_id": stream_id, "type": "step.completed", "tenant_id": poisoned,
            "aggregate_id": exec_id(poisoned, 1), "retries": 0,
        }

        code, out, err = await orq(database_url, "quarantine", "retry")
        assert code == 2 and "--all" in err  # nothing selected: refuses rather than guessing

        # Not fixed yet: the projector tries, fails again, and says why; the event stays quarantined.
        code, out, err = await orq(database_url, "quarantine", "retry", stream_id, "--wait", "30")
        assert code == 1, (out, err)
        assert "failed" in out and "poisoned step output" in out
        [entry] = await quarantined(engine)
        assert entry["retries"] == 1 and entry["retry_requested_at"] is None

        await accept_poisoned_steps(engine)  # the fix
        code, out, err = await orq(database_url, "quarantine", "retry", "--all", "--wait", "30")
        assert code == 0, (out, err)
        assert f"applied: p0 {stream_id}" in out
        assert await quarantined(engine) == []
        assert await step_output(engine, exec_id(poisoned, 1), 0) == {"x": POISON_MARK}
        assert (0, stream_id) in await archived_ids(engine)

        # The projector goes on as before.
        more = timed(run(poisoned, exec_id(poisoned, 3)), start_ms=history[-1].ts + 7)
        await append(redis, more, PARTITIONS)
        await caught_up(redis, engine, PARTITIONS, timeout=20)
    code, out, err = await orq(database_url, "quarantine", "list")
    assert code == 0 and out == "" and "0 quarantined" in err


async def test_retry_without_a_projector_then_replay_folds_it_in_order(
    redis: Redis, engine: AsyncEngine, database_url: str, settings: Settings
) -> None:
    poisoned, healthy = same_partition_tenants(2)
    await refuse_poisoned_steps(engine)
    await append(redis, poisoned_history(poisoned, healthy), PARTITIONS)
    async with running(projector(redis, engine, PARTITIONS)):
        await caught_up(redis, engine, PARTITIONS, timeout=20)
    [entry] = await quarantined(engine)

    await accept_poisoned_steps(engine)
    code, out, err = await orq(database_url, "quarantine", "retry", "--tenant", poisoned)
    assert code == 0, (out, err)
    assert f"applied: p0 {entry['stream_id']}" in out
    assert await quarantined(engine) == []
    assert await step_output(engine, exec_id(poisoned, 1), 0) == {"x": POISON_MARK}

    # The retried event is archived at its own place in the stream: replay folds it in order.
    await replay(settings, show_progress=False)
    assert await snapshot(engine) == fold(await stream_events(redis, PARTITIONS))
