"""Running projectors in tests and waiting for them to catch up."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from redis.asyncio import Redis
from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.projector.projector import Projector
from services.projector.store import CHECKPOINT_NAME, Store
from shared.log import keys
from shared.log.events import EventBase
from shared.readmodel import schema
from shared.readmodel.db import create_engine
from shared.readmodel.projection import Projection, needs_of
from tests.helpers import assert_eventually
from tests.projector.factories import fold, snapshot

TEST_LOCK_TTL_MS = 1_500


def projector(redis: Redis, engine: AsyncEngine, partitions: int, **options: object) -> Projector:
    options.setdefault("lock_ttl_ms", TEST_LOCK_TTL_MS)
    options.setdefault("idle_block_ms", 100)
    return Projector(redis, engine, partitions=partitions, **options)  # type: ignore[arg-type]


@asynccontextmanager
async def running(*projectors: Projector) -> AsyncIterator[None]:
    """Run projectors for the duration of the block, then stop them as SIGTERM would."""
    stop = asyncio.Event()
    tasks = [asyncio.create_task(p.run(stop)) for p in projectors]
    try:
        yield
    finally:
        stop.set()
        await asyncio.gather(*tasks)


async def checkpoints(engine: AsyncEngine) -> dict[int, str]:
    table = schema.projection_checkpoints
    async with engine.connect() as conn:
        rows = await conn.execute(select(table.c.partition, table.c.last_id).where(table.c.name == CHECKPOINT_NAME))
        return {int(p): str(last) for p, last in rows}


async def archived(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(schema.event_archive))).scalar_one())


async def stream_tips(redis: Redis, partitions: int) -> dict[int, str]:
    """The last id of every non-empty partition log."""
    out = {}
    for p in range(partitions):
        last = await redis.xrevrange(keys.log(p), count=1)
        if last:
            out[p] = last[0][0].decode()
    return out


async def caught_up(redis: Redis, engine: AsyncEngine, partitions: int, timeout: float = 15.0) -> None:
    """Wait until every partition's checkpoint is its log's last id and nothing is pending."""
    async def check() -> bool:
        tips = await stream_tips(redis, partitions)
        marks = await checkpoints(engine)
        assert {p: marks.get(p) for p in tips} == tips
        for p in tips:
            pending = await redis.xpending(keys.log(p), keys.GROUP_PROJECTOR)
            assert pending["pending"] == 0
        return True

    await assert_eventually(check, timeout=timeout, message="projector caught up")


async def fold_in_batches(url: str, history: Sequence[EventBase], cuts: Sequence[int]) -> None:
    """Project ``history`` through SQL in batches split at ``cuts`` (each batch loads what it needs, folds,
    writes); the tables must equal one in-memory fold of the whole history."""
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            for table in schema.PROJECTION_TABLES:
                await conn.execute(delete(table))
        store = Store(engine)
        bounds = [0, *sorted(set(cuts)), len(history)]
        for lo, hi in zip(bounds, bounds[1:], strict=False):
            batch = history[lo:hi]
            projection = Projection()
            async with engine.begin() as conn:
                await store.load(conn, projection, needs_of(batch))
                projection.apply_all(batch)  # type: ignore[arg-type]
                await store.write(conn, projection)
        assert await snapshot(engine) == fold(history)
    finally:
        await engine.dispose()


def assert_apply_is_idempotent(history: Sequence[EventBase]) -> Projection:
    """Applying each event twice (the second is refused) and then the whole history again leaves the rows of
    one plain fold; that fold is returned for further checks."""
    once = Projection()
    once.apply_all(history)  # type: ignore[arg-type]
    twice = Projection()
    for event in history:
        twice.apply(event)
        assert not twice.apply(event)
    twice.apply_all(history)  # type: ignore[arg-type]
    assert twice.rows == once.rows
    return once
