"""The live projector on real Redis streams and real SQL."""

from __future__ import annotations

import msgspec
import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from services.projector.locks import PartitionLocks, ReadResult
from services.projector.projector import HeldPartition, Projector
from shared.infra.settings import Settings
from shared.log import keys
from shared.log.events import ExecutionQueued, ExecutionStarted, StepStarted, outline
from shared.log.redis import ensure_groups
from tests.helpers import assert_eventually
from tests.projector.factories import append, definition, fold, random_history, snapshot, stream_events
from tests.projector.helpers import archived, caught_up, projector, running

PARTITIONS = 4


async def test_projects_real_events(redis: Redis, engine: AsyncEngine, settings: Settings) -> None:
    history = random_history(1, tenants=4, executions=40)
    await append(redis, history, PARTITIONS)
    async with running(projector(redis, engine, PARTITIONS, batch=37)):
        await caught_up(redis, engine, PARTITIONS)
    events = await stream_events(redis, PARTITIONS)
    assert len(events) == len(history)
    rows = await snapshot(engine)
    assert rows == fold(events)
    assert await archived(engine) == len(history)
    assert len(rows["executions"]) == 40 and len(rows["tenants"]) == 4
    assert sum(r["executions"] for r in rows["usage_monthly"]) == 40
    # Keep running: later events are applied on top of what is there.
    more = random_history(2, tenants=2, executions=10, prefix="b")
    await append(redis, more, PARTITIONS)
    async with running(projector(redis, engine, PARTITIONS)):
        await caught_up(redis, engine, PARTITIONS)
    assert await snapshot(engine) == fold(await stream_events(redis, PARTITIONS))


async def test_expected_rows_for_one_run(redis: Redis, engine: AsyncEngine) -> None:
    tenant, wf, x = "a" * 32, "b" * 32, "c" * 32
    definition_ = definition("one", 3)
    await append(redis, [
        ExecutionQueued(tenant_id=tenant, aggregate_id=x, ts=1_000, workflow_id=wf, workflow_version=4,
                        steps=outline(definition_), params={"k": [1, 2]}, priority=3, trigger_type="webhook"),
        ExecutionStarted(tenant_id=tenant, aggregate_id=x, ts=1_100, attempt=1, executor="ex-1"),
        StepStarted(tenant_id=tenant, aggregate_id=x, ts=1_200, step_index=0, action="noop"),
    ], PARTITIONS)
    async with running(projector(redis, engine, PARTITIONS)):
        await caught_up(redis, engine, PARTITIONS)
    rows = await snapshot(engine)
    [execution] = rows["executions"]
    assert {k: execution[k] for k in ("status", "priority", "workflow_version", "trigger_type", "params",
                                      "queued_at", "started_at", "executor", "steps_total", "current_step")} == {
        "status": "running", "priority": 3, "workflow_version": 4, "trigger_type": "webhook", "params": {"k": [1, 2]},
        "queued_at": 1_000, "started_at": 1_100, "executor": "ex-1", "steps_total": 3, "current_step": 0,
    }
    assert [(s["step_index"], s["status"], s["attempts"]) for s in rows["execution_steps"]] == [
        (0, "running", 1), (1, "pending", 0), (2, "pending", 0)
    ]
    assert rows["usage_monthly"] == [{"tenant_id": tenant, "month": "197001", "executions": 1}]


async def test_undecodable_and_unknown_entries_are_archived_and_skipped(redis: Redis, engine: AsyncEngine) -> None:
    history = random_history(3, tenants=1, executions=3)
    p = keys.partition_of(history[0].tenant_id, PARTITIONS)
    await append(redis, history[:5], PARTITIONS)
    await redis.xadd(keys.log(p), {"t": "execution.started", "d": b"\xc1not msgpack"})
    unknown = msgspec.msgpack.encode({"type": "robot.dreamt", "tenant_id": "t", "aggregate_id": "a", "ts": 1})
    await redis.xadd(keys.log(p), {"t": "robot.dreamt", "d": unknown})
    await append(redis, history[5:], PARTITIONS)
    async with running(projector(redis, engine, PARTITIONS)):
        await caught_up(redis, engine, PARTITIONS)
    assert await archived(engine) == len(history) + 2
    assert await snapshot(engine) == fold(await stream_events_decodable(redis))


async def stream_events_decodable(redis: Redis) -> list[object]:
    from shared.log.consumer import records_of
    from shared.log.events import decode

    out: list[object] = []
    for p in range(PARTITIONS):
        for record in records_of(await redis.xrange(keys.log(p))):
            try:
                out.append(decode(record.body, record.id))
            except (msgspec.DecodeError, msgspec.ValidationError):
                pass
    return out


async def test_instances_share_partitions_and_release_on_stop(redis: Redis, engine: AsyncEngine) -> None:
    first, second = projector(redis, engine, PARTITIONS), projector(redis, engine, PARTITIONS)
    async with running(first, second):
        async def shared_fairly() -> None:
            assert sorted([len(first.held), len(second.held)]) == [2, 2]
            assert not set(first.held) & set(second.held)

        await assert_eventually(shared_fairly, timeout=10)
        history = random_history(4, tenants=6, executions=30)
        await append(redis, history, PARTITIONS)
        await caught_up(redis, engine, PARTITIONS)
        assert first.applied + second.applied == len(history)
    locks = PartitionLocks(redis, token="probe", ttl_ms=1000)
    assert [await locks.holder(p) for p in range(PARTITIONS)] == [None] * PARTITIONS
    assert await snapshot(engine) == fold(await stream_events(redis, PARTITIONS))
    assert await archived(engine) == len(history)


async def test_survivor_takes_over_a_dead_instance_partitions(redis: Redis, engine: AsyncEngine) -> None:
    history = random_history(5, tenants=6, executions=20)
    await append(redis, history, PARTITIONS)
    # A projector that read a batch on every partition and died before applying it: entries stay pending.
    await ensure_groups(redis, [keys.log(p) for p in range(PARTITIONS)], keys.GROUP_PROJECTOR)
    dead = PartitionLocks(redis, token="dead", ttl_ms=500)
    for p in range(PARTITIONS):
        assert await dead.acquire(p)
        assert len((await dead.read(p, "dead", 5) or ReadResult([], [], "")).ids) == 5
    async with running(projector(redis, engine, PARTITIONS)):
        await caught_up(redis, engine, PARTITIONS)
    assert await snapshot(engine) == fold(await stream_events(redis, PARTITIONS))
    assert await archived(engine) == len(history)


async def test_a_projector_that_lost_its_lock_stops_applying(redis: Redis, engine: AsyncEngine) -> None:
    victim = projector(redis, engine, PARTITIONS)
    async with running(victim):
        await assert_eventually(lambda: _holds(victim, PARTITIONS), timeout=5)
        # Another instance takes partition 0 (as after a pause of the victim past the lock's TTL).
        await redis.set(keys.projector_lock(0), "thief", px=60_000)
        await assert_eventually(lambda: _lacks(victim, 0), timeout=5)
        history = random_history(6, tenants=8, executions=10)
        await append(redis, history, PARTITIONS)
        stolen = [ev for ev in history if keys.partition_of(ev.tenant_id, PARTITIONS) == 0]
        assert stolen
        await assert_eventually(lambda: _archived_is(engine, len(history) - len(stolen)), timeout=10)
        assert 0 not in victim.held
    await redis.delete(keys.projector_lock(0))
    async with running(projector(redis, engine, PARTITIONS)):
        await caught_up(redis, engine, PARTITIONS)
    assert await snapshot(engine) == fold(await stream_events(redis, PARTITIONS))


async def _holds(p: Projector, n: int) -> bool:
    return len(p.held) == n


async def _lacks(p: Projector, partition: int) -> bool:
    return partition not in p.held


async def _archived_is(engine: AsyncEngine, n: int) -> bool:
    return await archived(engine) == n


async def test_zombie_commit_is_fenced_and_skipped(redis: Redis, engine: AsyncEngine) -> None:
    """A paused owner commits a batch after another projector took its partition over: nothing doubles."""
    history = random_history(7, tenants=1, executions=8)
    p = keys.partition_of(history[0].tenant_id, PARTITIONS)
    await append(redis, history, PARTITIONS)
    await ensure_groups(redis, [keys.log(q) for q in range(PARTITIONS)], keys.GROUP_PROJECTOR)

    def no_ack(_p: int, _last_id: str) -> None:
        raise RuntimeError("paused before the ack")

    zombie = projector(redis, engine, PARTITIONS, batch=10, after_commit=no_ack)
    assert await zombie.locks.acquire(p)
    zombie_batch = await zombie.locks.read(p, zombie.consumer, 10)
    assert zombie_batch is not None and len(zombie_batch.ids) == 10
    await redis.delete(keys.projector_lock(p))  # the zombie's lock expires while it is paused

    heir = projector(redis, engine, PARTITIONS, batch=25)
    assert await heir.locks.acquire(p)
    assert await heir.locks.take_over(p, heir.consumer) == 10
    held = HeldPartition(p, checkpoint=None)  # read before the zombie commits

    zombie_held = HeldPartition(p)
    with pytest.raises(RuntimeError, match="paused"):
        await zombie.apply(zombie_held, zombie_batch)  # commits, never acks
    await zombie_held.close()
    assert await archived(engine) == 10

    while await heir.step(held):  # its first commit is fenced, it reloads the checkpoint and skips the 10
        pass
    await heir.locks.ack(p, heir.consumer, held.ack_upto)
    await held.close()
    assert heir.applied == len(history) - 10
    assert await archived(engine) == len(history)
    assert await snapshot(engine) == fold(await stream_events(redis, PARTITIONS))
    assert (await redis.xpending(keys.log(p), keys.GROUP_PROJECTOR))["pending"] == 0
