"""Values that need escaping or are binary survive the SQL paths (MySQL inline literals, archive pages)."""

from __future__ import annotations

import os

import msgspec
import pytest
from redis.asyncio import Redis
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.projector.mysql_bulk import MysqlBulk
from services.projector.replay import Replayer
from services.projector.store import Store
from shared.log.events import (
    EventBase,
    ExecutionFailed,
    ExecutionLog,
    ExecutionQueued,
    ExecutionStarted,
    StepFailed,
    StepStarted,
    outline,
)
from shared.readmodel import schema
from shared.readmodel.db import is_sqlite
from shared.readmodel.projection import Projection
from tests.projector.factories import MID_MONTH_MS, definition, fold, random_history, snapshot, with_ids

NASTY = [
    "it's", 'say "hi"', "back\\slash", "new\nline", "nul\x00byte", "ctrl-z \x1a", "100% %s %(x)s", "ünïcødé ✓ 𝄞",
    "'; DROP TABLE executions; --", "",
]


def _nasty_history() -> list[EventBase]:
    base = random_history(31, tenants=1, executions=1)[:2]
    queued = ExecutionQueued(tenant_id=base[0].tenant_id, aggregate_id="e" * 32, ts=0, workflow_id=base[1].aggregate_id,
                             workflow_version=1, steps=outline(definition("nasty", 1)), priority=5, params={"p": NASTY})
    tenant, execution = queued.tenant_id, queued.aggregate_id
    extra: list[EventBase] = [ExecutionStarted(tenant_id=tenant, aggregate_id=execution, ts=0, attempt=9, executor="n")]
    for i, text in enumerate(NASTY):
        extra += [
            StepStarted(tenant_id=tenant, aggregate_id=execution, ts=0, step_index=100 + i, action=text[:50],
                        label=text),
            StepFailed(tenant_id=tenant, aggregate_id=execution, ts=0, step_index=100 + i, error=text),
            ExecutionLog(tenant_id=tenant, aggregate_id=execution, ts=0, step_index=i, message=text, level="x"),
        ]
    extra.append(ExecutionFailed(tenant_id=tenant, aggregate_id=execution, ts=0, error="\n".join(NASTY)))
    events = [*base, queued, *extra]
    return with_ids([msgspec.structs.replace(e, ts=MID_MONTH_MS + i) for i, e in enumerate(events)])


async def test_escaped_values_round_trip(engine: AsyncEngine) -> None:
    history = _nasty_history()
    store = Store(engine)
    projection = Projection()
    projection.apply_all(history)  # type: ignore[arg-type]
    async with engine.begin() as conn:
        await store.write(conn, projection)
    rows = await snapshot(engine)
    assert rows == fold(history)
    assert {r["error_message"] for r in rows["execution_steps"] if r["step_index"] >= 100} == set(NASTY)


async def test_mysql_literals_without_backslash_escapes(engine: AsyncEngine) -> None:
    if is_sqlite(engine):
        pytest.skip("MySQL sql_mode only")
    history = _nasty_history()
    projection = Projection()
    projection.apply_all(history)  # type: ignore[arg-type]
    bulk = MysqlBulk()
    async with engine.begin() as conn:
        await conn.exec_driver_sql("SET SESSION sql_mode = CONCAT(@@sql_mode, ',NO_BACKSLASH_ESCAPES')")
        for table, rows in projection.changes().items():
            await bulk.write(conn, schema.metadata.tables[table], rows, upsert=True)
            await bulk.write(conn, schema.metadata.tables[table], rows, upsert=True)  # and as updates
    assert await snapshot(engine) == fold(history)


async def test_binary_archive_bodies_read_back_exactly(redis: Redis, engine: AsyncEngine) -> None:
    bodies = [os.urandom(n) for n in (0, 1, 2, 3, 57, 58, 76, 77, 1000, 70_000)] + [bytes(range(256)) * 3]
    rows = [
        {"partition": 1, "ms": 1000 + i // 3, "seq": i % 3, "type": "x", "tenant_id": "t", "aggregate_id": "a",
         "body": body}
        for i, body in enumerate(bodies)
    ]
    async with engine.begin() as conn:
        await Store(engine).archive(conn, rows)
    async with engine.connect() as conn:
        stored = (await conn.execute(select(schema.event_archive.c.body).order_by("ms", "seq"))).scalars().all()
    assert list(stored) == bodies
    pages = [page async for page in Replayer(redis, engine, partitions=2, batch=4).archive_pages(1)]
    assert [len(page) for page in pages] == [4, 4, 3]
    assert [body for page in pages for _, _, body in page] == bodies
    assert [(ms, seq) for page in pages for ms, seq, _ in page] == [(r["ms"], r["seq"]) for r in rows]


async def test_replay_of_an_archive_too_large_for_one_json_page(redis: Redis, engine: AsyncEngine) -> None:
    """A page the server cannot aggregate (past max_allowed_packet) is read row by row instead."""
    big = os.urandom(6 * 1024 * 1024)  # base64 of three of these passes MariaDB's default 16 MiB packet
    async with engine.begin() as conn:
        await conn.execute(insert(schema.event_archive), [
            {"partition": 0, "ms": 5, "seq": i, "type": "x", "tenant_id": "t", "aggregate_id": "a", "body": big}
            for i in range(3)
        ])
    pages = [page async for page in Replayer(redis, engine, partitions=1, batch=10).archive_pages(0)]
    assert [[(ms, seq, body == big) for ms, seq, body in page] for page in pages] == [
        [(5, 0, True), (5, 1, True), (5, 2, True)]
    ]
