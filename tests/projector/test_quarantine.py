"""A poisoned event is set aside (quarantined) and its partition goes on; transient failures are retried and set
nothing aside; replay folds what the live projection folded. SQLite and MariaDB."""

from __future__ import annotations

import logging
import sqlite3
from typing import Any

import msgspec
import pytest
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from services.projector.replay import replay
from shared.infra.clock import now_ms
from shared.infra.settings import Settings
from shared.log import keys
from shared.log.consumer import records_of
from shared.log.events import EventBase
from shared.service.metrics import render
from tests.helpers import assert_eventually
from tests.projector.factories import append, fold, snapshot, stream_events
from tests.projector.helpers import archived, caught_up, checkpoints, projector, running
from tests.projector.poison import (
    OUT_OF_RANGE,
    PARTITIONS,
    archived_ids,
    exec_id,
    interleave,
    is_poison_step,
    quarantined,
    run,
    same_partition_tenants,
    tenant_setup,
    timed,
)

QUARANTINE_LOGGER = "services.projector.quarantine"


def poisoned_batch(poisoned: str, healthy: str) -> list[EventBase]:
    """Two tenants of one partition interleaved: ``poisoned`` has a run whose step 0 took an out-of-range
    duration and one whose output the fold cannot encode (a msgpack extension type); ``healthy`` runs
    before, around and after them."""
    return interleave(
        tenant_setup(healthy) + run(healthy, exec_id(healthy, 1)) + run(healthy, exec_id(healthy, 2)),
        tenant_setup(poisoned) + run(poisoned, exec_id(poisoned, 1), duration_ms=OUT_OF_RANGE)
        + run(poisoned, exec_id(poisoned, 2), output={"blob": msgspec.msgpack.Ext(7, b"\x00\x01")})
        + run(poisoned, exec_id(poisoned, 3)),
    )


async def project(redis: Redis, engine: AsyncEngine, events: list[EventBase], **options: Any) -> None:
    await append(redis, events, PARTITIONS)
    async with running(projector(redis, engine, PARTITIONS, **options)):
        await caught_up(redis, engine, PARTITIONS, timeout=20)


async def test_a_poisoned_event_is_quarantined_and_the_partition_goes_on(
    redis: Redis, engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    poisoned, healthy = same_partition_tenants(2)
    first = poisoned_batch(poisoned, healthy)
    later = timed(run(healthy, exec_id(healthy, 3)) + run(poisoned, exec_id(poisoned, 4)), start_ms=first[-1].ts + 7)
    await append(redis, first, PARTITIONS)
    live = projector(redis, engine, PARTITIONS, batch=1000)  # the whole first part is one batch
    with caplog.at_level(logging.ERROR, logger=QUARANTINE_LOGGER):
        async with running(live):
            await caught_up(redis, engine, PARTITIONS, timeout=20)
            await append(redis, later, PARTITIONS)  # and the partition keeps going after it
            await caught_up(redis, engine, PARTITIONS, timeout=20)

    events = await stream_events(redis, PARTITIONS)
    poisons = [ev for ev in events if is_poison_step(ev)]
    assert len(poisons) == 2 and len(events) == len(first) + len(later)
    # Every other event is projected, both tenants' (the healthy one entirely): the rows are one fold without
    # the two poisons.
    assert await snapshot(engine) == fold([ev for ev in events if ev not in poisons])

    rows = await quarantined(engine)
    assert [(r["partition"], r["stream_id"], r["type"], r["tenant_id"], r["aggregate_id"]) for r in rows] == [
        (0, ev.id, "step.completed", poisoned, ev.aggregate_id) for ev in poisons
    ]
    bodies = {r.id: r.body for r in records_of(await redis.xrange(keys.log(0)))}
    assert [r["body"] for r in rows] == [bodies[ev.id] for ev in poisons]  # the raw body, to retry from
    assert "range" in rows[0]["error"].lower() or "int too large" in rows[0]["error"].lower()
    assert "Ext" in rows[1]["error"]
    assert all(now_ms() - 60_000 < r["quarantined_at"] <= now_ms() for r in rows)
    # Below the checkpoint every event is in exactly one place: the archive or the quarantine.
    archive = await archived_ids(engine)
    assert archive.isdisjoint({(0, ev.id) for ev in poisons})
    assert archive | {(0, ev.id) for ev in poisons} == {(0, ev.id) for ev in events}

    errors = [r for r in caplog.records if r.levelno == logging.ERROR and r.name == QUARANTINE_LOGGER]
    assert len(errors) == 2
    for record, ev in zip(errors, poisons, strict=True):
        message = record.getMessage()
        assert "partition 0" in message and ev.id in message and "step.completed" in message
    assert live.quarantined == 2
    from services.projector.projector import projector_metrics

    assert "orq_projection_quarantined_total 2.0" in render(projector_metrics(live))


async def test_a_transient_failure_is_retried_and_quarantines_nothing(
    redis: Redis, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The checkpoint row is locked by someone else: every attempt fails (lock wait timeout on MariaDB,
    "database is locked" on SQLite) until it is released; nothing is set aside meanwhile."""
    poisoned, healthy = same_partition_tenants(2)
    setup = timed(tenant_setup(healthy) + tenant_setup(poisoned))
    engine = impatient_engine(database_url)
    try:
        await project(redis, engine, setup)
        more = timed(run(healthy, exec_id(healthy, 1)) + run(poisoned, exec_id(poisoned, 1)),
                     start_ms=setup[-1].ts + 7)
        before = (await checkpoints(engine))[0]
        live = projector(redis, engine, PARTITIONS)
        with caplog.at_level(logging.WARNING, logger="services.projector.projector"):
            async with running(live):
                async with CheckpointLocked(database_url):
                    await append(redis, more, PARTITIONS)
                    await assert_eventually(lambda: _failed_at_least(caplog, 2), timeout=20,
                                            message="two failed attempts")
                    assert await quarantined(engine) == []
                    assert (await checkpoints(engine))[0] == before
                await caught_up(redis, engine, PARTITIONS, timeout=20)
        assert await quarantined(engine) == []
        assert live.quarantined == 0
        assert await snapshot(engine) == fold(await stream_events(redis, PARTITIONS))
        assert await archived(engine) == len(setup) + len(more)
    finally:
        await engine.dispose()


async def test_replay_equals_live_projection_with_quarantined_events(
    redis: Redis, engine: AsyncEngine, settings: Settings
) -> None:
    """Rule: replay folds the archive, which holds every projected event and no quarantined one, so a
    quarantined event is skipped by replay exactly as it was by the live projection; a poisoned event in the
    stream's tail (not projected yet) is quarantined by replay just as the live projector would."""
    poisoned, healthy = same_partition_tenants(2)
    history = poisoned_batch(poisoned, healthy)
    await project(redis, engine, history, batch=50)
    live, marks, aside = await snapshot(engine), await checkpoints(engine), await quarantined(engine)
    assert len(aside) == 2

    assert await replay(settings, show_progress=False) == len(history) - 2  # the archive: projected events
    assert await snapshot(engine) == live
    assert await checkpoints(engine) == marks
    assert await quarantined(engine) == aside

    # Events appended while no projector runs (the tail), one of them poisoned: replay sets it aside too.
    tail = timed(run(healthy, exec_id(healthy, 5)) + run(poisoned, exec_id(poisoned, 5), duration_ms=OUT_OF_RANGE),
                 start_ms=history[-1].ts + 7)
    await append(redis, tail, PARTITIONS)
    assert await replay(settings, show_progress=False) == len(history) - 2 + len(tail)
    events = await stream_events(redis, PARTITIONS)
    assert await snapshot(engine) == fold([ev for ev in events if not is_poison_step(ev)])
    assert [r["stream_id"] for r in await quarantined(engine)] == [ev.id for ev in events if is_poison_step(ev)]
    tips = {0: events[-1].id}
    assert {p: m for p, m in (await checkpoints(engine)).items() if p in tips} == tips


# --- helpers ------------------------------------------------------------------------------------------------------


async def _failed_at_least(caplog: pytest.LogCaptureFixture, n: int) -> bool:
    failed = [r for r in caplog.records if "batch failed" in r.getMessage()]
    assert len(failed) >= n, [r.getMessage() for r in caplog.records][-5:]
    return True


def impatient_engine(url: str) -> AsyncEngine:
    """An engine that gives up waiting for a lock after about a second (as a busy production database might)."""
    if url.startswith("sqlite"):
        return create_async_engine(url, connect_args={"timeout": 0.3})
    return create_async_engine(url, connect_args={"init_command": "SET SESSION innodb_lock_wait_timeout = 1"})


class CheckpointLocked:
    """Another session holds a write lock on partition 0's checkpoint row (SQLite: on the whole database)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._sqlite: sqlite3.Connection | None = None
        self._engine: AsyncEngine | None = None
        self._conn: Any = None

    async def __aenter__(self) -> None:
        if self.url.startswith("sqlite"):
            self._sqlite = sqlite3.connect(self.url.split("///", 1)[1], isolation_level=None)
            self._sqlite.execute("BEGIN IMMEDIATE")
            return
        self._engine = create_async_engine(self.url)
        self._conn = await self._engine.connect()
        await self._conn.begin()
        await self._conn.execute(text("SELECT last_id FROM projection_checkpoints WHERE `partition` = 0 FOR UPDATE"))

    async def __aexit__(self, *exc: object) -> None:
        if self._sqlite is not None:
            self._sqlite.execute("ROLLBACK")
            self._sqlite.close()
        if self._conn is not None:
            await self._conn.rollback()
            await self._conn.close()
        if self._engine is not None:
            await self._engine.dispose()
