"""Maintenance trims only what every reader is done with, and replay still rebuilds everything after it."""

from __future__ import annotations

from dataclasses import replace

import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from services.projector.replay import replay
from shared.domain import commit_script
from shared.infra.clock import now_ms, stream_id_parts
from shared.infra.settings import Settings
from shared.log import keys
from shared.log.commit import Unit
from shared.log.events import NotificationQueued, NotificationSent
from shared.log.redis import text
from shared.service.maintenance import run_maintenance
from tests.projector.factories import append, random_history, snapshot
from tests.projector.helpers import caught_up, checkpoints, projector, running

PARTITIONS = 4


def _ids(entries: list[tuple[bytes, dict[bytes, bytes]]]) -> list[str]:
    return [text(entry_id) for entry_id, _ in entries]


async def _log_ids(redis: Redis) -> dict[int, list[str]]:
    return {p: _ids(await redis.xrange(keys.log(p))) for p in range(PARTITIONS)}


async def _notification_events(redis: Redis, settings: Settings) -> None:
    """A notification's events in the tail too, so replay must rebuild the notifications table."""
    tenant = "n" * 32
    p = keys.partition_of(tenant, settings.partitions)
    common = {"tenant_id": tenant, "aggregate_id": "q" * 32, "ts": now_ms(), "execution_id": "x" * 32,
              "workflow_id": "w" * 32, "trigger": "completed", "channel": "webhook",
              "target": "https://hooks.example.com/a", "created_at": 1}
    committer = commit_script.committer(redis)
    await committer.commit(Unit(p).event(NotificationQueued(**common)).event(NotificationSent(**common, attempt=1)))
    await committer.close()


async def test_trim_keeps_unacknowledged_and_unarchived_entries_and_replay_rebuilds(
    redis: Redis, engine: AsyncEngine, settings: Settings
) -> None:
    settings = replace(settings, log_min_retention_s=0)
    await append(redis, random_history(41, tenants=6, executions=40), PARTITIONS)
    async with running(projector(redis, engine, PARTITIONS, batch=40)):
        await caught_up(redis, engine, PARTITIONS)
    # Appended while no projector runs: not archived yet (after the checkpoint).
    await append(redis, random_history(42, tenants=6, executions=15, prefix="late"), PARTITIONS)
    await _notification_events(redis, settings)
    before = await _log_ids(redis)
    marks = await checkpoints(engine)

    # A slow consumer group: it has read everything, acked all but one entry per partition.
    unacked: dict[int, str] = {}
    for p in range(PARTITIONS):
        await redis.xgroup_create(keys.log(p), "slow", id="0")
        ids = _ids((await redis.xreadgroup("slow", "c1", {keys.log(p): ">"}))[0][1])
        keep = ids[len(ids) // 3 * (p % 3)]  # the unacked one sits at a different place in each partition
        await redis.xack(keys.log(p), "slow", *[i for i in ids if i != keep])
        unacked[p] = keep

    dry = await run_maintenance(settings, redis, engine, now_ms=now_ms(), dry_run=True)
    assert await _log_ids(redis) == before  # a dry run changes nothing
    report = await run_maintenance(settings, redis, engine, now_ms=now_ms())
    assert [t.removed for t in report.logs] == [t.removed for t in dry.logs]
    assert sum(t.removed for t in report.logs) > 0

    after = await _log_ids(redis)
    for p in range(PARTITIONS):
        bound = min(stream_id_parts(marks[p]), stream_id_parts(unacked[p]))
        kept = [i for i in before[p] if stream_id_parts(i) >= bound]
        assert after[p] == kept, f"partition {p}"
        assert unacked[p] in after[p]  # still pending for the slow group: its body must stay
        assert all(i in after[p] for i in before[p] if stream_id_parts(i) > stream_id_parts(marks[p]))
        expected_by = "group slow" if stream_id_parts(unacked[p]) < stream_id_parts(marks[p]) else \
            "projector checkpoint"
        assert report.logs[p].limited_by == expected_by
        assert report.logs[p].removed == len(before[p]) - len(kept)

    # The live projection takes the tail; a replay from the archive plus the trimmed streams agrees with it.
    async with running(projector(redis, engine, PARTITIONS, batch=40)):
        await caught_up(redis, engine, PARTITIONS)
    live = await snapshot(engine)
    assert live["notifications"] and live["notifications"][0]["status"] == "sent"
    assert await replay(settings, show_progress=False) > 0
    assert await snapshot(engine) == live


async def test_nothing_is_trimmed_before_the_first_checkpoint(
    redis: Redis, engine: AsyncEngine, settings: Settings
) -> None:
    settings = replace(settings, log_min_retention_s=0)
    await append(redis, random_history(43, tenants=3, executions=5), PARTITIONS)
    before = await _log_ids(redis)
    report = await run_maintenance(settings, redis, engine, now_ms=now_ms())
    assert await _log_ids(redis) == before
    assert {t.limited_by for t in report.logs} == {"no projector checkpoint yet"}


async def test_minimum_retention_keeps_recent_entries(redis: Redis, engine: AsyncEngine, settings: Settings) -> None:
    await append(redis, random_history(44, tenants=3, executions=5), PARTITIONS)
    async with running(projector(redis, engine, PARTITIONS)):
        await caught_up(redis, engine, PARTITIONS)
    before = await _log_ids(redis)
    report = await run_maintenance(settings, redis, engine, now_ms=now_ms())  # default: keep the last hour
    assert await _log_ids(redis) == before
    assert all(t.limited_by == "minimum retention" for t, ids in zip(report.logs, before.values(), strict=True)
               if ids)


@pytest.mark.parametrize("dry_run", [True, False])
async def test_dlq_cap_purges_the_oldest_through_events(
    redis: Redis, engine: AsyncEngine, settings: Settings, dry_run: bool
) -> None:
    settings = replace(settings, dlq_max_entries=2)
    tenant = "d" * 32
    p = keys.partition_of(tenant, settings.partitions)
    executions = [f"{i:032d}" for i in range(5)]
    for execution_id in executions:
        entry = await redis.xadd(keys.dlq(p), {"e": execution_id, "tenant": tenant, "reason": "exhausted",
                                               "error": "x"})
        await redis.hset(keys.execution(p, execution_id), mapping={"tenant": tenant, "status": "failed",
                                                                   "dead_lettered": "1", "dlq_id": entry})
    report = await run_maintenance(settings, redis, engine, now_ms=now_ms(), dry_run=dry_run)
    assert report.dlq[p].purged == executions[:3]
    log_types = [text(f[b"t"]) for _, f in await redis.xrange(keys.log(p))]
    if dry_run:
        assert await redis.xlen(keys.dlq(p)) == 5 and log_types == []
    else:
        remaining = [text(f[b"e"]) for _, f in await redis.xrange(keys.dlq(p))]
        assert remaining == executions[3:]
        assert log_types == ["execution.dlq_purged"] * 3
        assert text(await redis.hget(keys.execution(p, executions[0]), "dead_lettered")) == "0"


async def test_idempotency_keys_without_ttl_get_one(redis: Redis, engine: AsyncEngine, settings: Settings) -> None:
    p = 1
    await redis.set(keys.idempotency(p, "t1", "POST /x k1"), b"{}")
    await redis.set(keys.idempotency(p, "t1", "POST /x k2"), b"{}", ex=100)
    dry = await run_maintenance(settings, redis, engine, now_ms=now_ms(), dry_run=True)
    assert (dry.idempotency_keys, dry.idempotency_without_ttl) == (2, 1)
    assert await redis.ttl(keys.idempotency(p, "t1", "POST /x k1")) == -1
    await run_maintenance(settings, redis, engine, now_ms=now_ms())
    assert 0 < await redis.ttl(keys.idempotency(p, "t1", "POST /x k1")) <= settings.idempotency_ttl_s
    assert await redis.get(keys.maintenance_report()) is not None
