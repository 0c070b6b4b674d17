"""``orq replay`` rebuilds the same rows as the live projection, from the archive plus the streams' tail."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from services.projector.locks import PartitionLocks
from services.projector.replay import Replayer, replay
from shared.infra.errors import Conflict
from shared.infra.settings import Settings
from shared.log import keys
from tests.projector.factories import append, fold, random_history, snapshot, stream_events
from tests.projector.helpers import archived, caught_up, checkpoints, projector, running, stream_tips

PARTITIONS = 4


async def test_replay_equals_live_projection(redis: Redis, engine: AsyncEngine, settings: Settings) -> None:
    history = random_history(21, tenants=5, executions=50)
    await append(redis, history, PARTITIONS)
    async with running(projector(redis, engine, PARTITIONS, batch=50)):
        await caught_up(redis, engine, PARTITIONS)
    live = await snapshot(engine)
    marks = await checkpoints(engine)
    assert await replay(settings, show_progress=False) == len(history)
    assert await snapshot(engine) == live
    assert await checkpoints(engine) == marks
    assert await archived(engine) == len(history)


async def test_replay_after_trim_uses_archive_and_tail(redis: Redis, engine: AsyncEngine, settings: Settings) -> None:
    first = random_history(22, tenants=4, executions=30)
    await append(redis, first, PARTITIONS)
    async with running(projector(redis, engine, PARTITIONS)):
        await caught_up(redis, engine, PARTITIONS)
    projected = await stream_events(redis, PARTITIONS)
    for p in range(PARTITIONS):  # maintenance trimmed everything the projector acknowledged
        await redis.xtrim(keys.log(p), maxlen=0, approximate=False)
    # Later events, appended while no projector runs: only the streams have them.
    later = random_history(23, tenants=4, executions=20, prefix="later")
    await append(redis, later, PARTITIONS)
    tail = await stream_events(redis, PARTITIONS)
    assert len(tail) == len(later)

    assert await replay(settings, show_progress=False) == len(first) + len(later)
    rebuilt = await snapshot(engine)
    assert rebuilt == fold([*projected, *tail])
    assert await archived(engine) == len(first) + len(later)
    tips, marks = await stream_tips(redis, PARTITIONS), await checkpoints(engine)
    assert tips and {p: marks[p] for p in tips} == tips

    # A live projector then finds the tail already applied: it skips and acks, changing nothing.
    async with running(projector(redis, engine, PARTITIONS)):
        await caught_up(redis, engine, PARTITIONS)
    assert await snapshot(engine) == rebuilt
    assert await archived(engine) == len(first) + len(later)


async def test_small_batches_and_cache_evictions_give_the_same_rows(redis: Redis, engine: AsyncEngine) -> None:
    history = random_history(24, tenants=3, executions=25)
    await append(redis, history[: len(history) // 2], PARTITIONS)
    async with running(projector(redis, engine, PARTITIONS, batch=13)):
        await caught_up(redis, engine, PARTITIONS)
    await append(redis, history[len(history) // 2 :], PARTITIONS)  # half archived, half only in the tail
    expected = fold(await stream_events(redis, PARTITIONS))
    replayer = Replayer(redis, engine, partitions=PARTITIONS, batch=7, cache_rows=40)
    assert await replayer.run() == len(history)
    assert await snapshot(engine) == expected


async def test_replay_refuses_while_a_projector_holds_a_partition(redis: Redis, settings: Settings) -> None:
    live = PartitionLocks(redis, token="live-projector", ttl_ms=5_000)
    assert await live.acquire(2)
    with pytest.raises(Conflict, match="stop every projector"):
        await replay(settings, show_progress=False)
    # Nothing else stays locked by the refused replay.
    assert [await live.holder(p) for p in range(PARTITIONS)] == [None, None, "live-projector", None]


async def test_replay_of_nothing(redis: Redis, engine: AsyncEngine, settings: Settings) -> None:
    assert await replay(settings, show_progress=True) == 0
    assert all(not rows for rows in (await snapshot(engine)).values())
