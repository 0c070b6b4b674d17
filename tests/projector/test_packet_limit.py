"""MariaDB's ``max_allowed_packet`` on a private server (256 KiB, changed with ``SET GLOBAL`` there only).

A statement over the limit does not get a clean error: the server drops the connection, so the client sees
"Lost connection" (2013) — the same as a real outage. Multi-row statements are therefore split by byte size
so only a single oversized row can fail, that row is refused before it is sent (and quarantined), and a real
outage is retried without setting anything aside.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from redis.asyncio import Redis
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.projector.mysql_bulk import MysqlBulk
from shared.readmodel import schema
from shared.readmodel.db import create_engine, create_schema
from tests.helpers import REDIS_URL, assert_eventually
from tests.processes import ROOT, orq_env
from tests.projector.factories import append, fold, snapshot, stream_events
from tests.projector.helpers import caught_up, projector, running
from tests.projector.poison import (
    PARTITIONS,
    exec_id,
    interleave,
    quarantined,
    run,
    same_partition_tenants,
    tenant_setup,
    timed,
)
from tests.projector.private_mariadb import PrivateMariadb, private_mariadb

pytestmark = [pytest.mark.mysql, pytest.mark.slow]

PACKET = 256 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateMariadb]:
    with private_mariadb(tmp_path_factory.mktemp("mariadb"), max_allowed_packet=PACKET) as running_server:
        yield running_server


@pytest.fixture
async def small_packets(server: PrivateMariadb) -> AsyncIterator[AsyncEngine]:
    """A fresh database on the private server, its packet limit back at 256 KiB."""
    server.sql(f"SET GLOBAL max_allowed_packet = {PACKET}; DROP DATABASE IF EXISTS orq; CREATE DATABASE orq")
    engine = create_engine(server.url("orq"))
    await create_schema(engine)
    yield engine
    await engine.dispose()


def log_row(n: int, message: str) -> dict[str, Any]:
    return {"execution_id": "e" * 32, "event_id": f"1-{n}", "tenant_id": "t" * 32, "step_index": 0,
            "level": "info", "message": message, "ts": n}


async def test_multi_row_statements_are_split_by_bytes(small_packets: AsyncEngine) -> None:
    """Small rows and one large row (under the limit alone, over it together): written as statements that
    each fit; multi-byte text counts by its bytes, not its characters."""
    rows = [log_row(n, "m" * 1000) for n in range(59)] + [log_row(59, "L" * 200_000)]
    rows += [log_row(60 + n, "€" * 30_000) for n in range(4)]  # 90 KB each in UTF-8
    bulk = MysqlBulk()
    async with small_packets.begin() as conn:
        await bulk.prepare(conn)
        statements = bulk.render(schema.execution_logs, rows, upsert=True)
        assert max(len(s.encode()) for s in statements) < PACKET
        await bulk.execute(conn, statements)
    async with small_packets.connect() as conn:
        count = (await conn.execute(select(func.count()).select_from(schema.execution_logs))).scalar_one()
    assert count == len(rows)


async def test_a_single_row_over_the_limit_is_refused_before_it_is_sent(small_packets: AsyncEngine) -> None:
    from services.projector.mysql_bulk import RowTooLarge

    bulk = MysqlBulk()
    async with small_packets.connect() as conn:
        await bulk.prepare(conn)
        with pytest.raises(RowTooLarge, match="max_allowed_packet") as refused:
            bulk.render(schema.execution_logs, [log_row(1, "x"), log_row(2, "y" * 300_000)], upsert=True)
        assert "execution_logs" in str(refused.value)
        assert (await conn.exec_driver_sql("SELECT 1")).scalar_one() == 1  # the connection is still fine


async def test_an_oversized_row_is_quarantined_then_retried_once_the_limit_is_raised(
    redis: Redis, small_packets: AsyncEngine, server: PrivateMariadb, caplog: pytest.LogCaptureFixture
) -> None:
    """The operator raises the limit while the projector runs (its connection still has the old one) and
    retries: the projector applies the event on a connection that sees the new limit."""
    poisoned, healthy = same_partition_tenants(2)
    big = {"blob": "z" * 300_000}  # the step row, and the event's own archive row, are over 256 KiB
    history = interleave(
        tenant_setup(healthy) + run(healthy, exec_id(healthy, 1)) + run(healthy, exec_id(healthy, 2)),
        tenant_setup(poisoned) + run(poisoned, exec_id(poisoned, 1), output=big) + run(poisoned, exec_id(poisoned, 2)),
    )
    later = timed(run(healthy, exec_id(healthy, 3)), start_ms=history[-1].ts + 7)
    await append(redis, history, PARTITIONS)
    with caplog.at_level(logging.ERROR, logger="services.projector.quarantine"):
        async with running(projector(redis, small_packets, PARTITIONS, batch=500)):
            await caught_up(redis, small_packets, PARTITIONS, timeout=30)
            await append(redis, later, PARTITIONS)
            await caught_up(redis, small_packets, PARTITIONS, timeout=30)
            events = await stream_events(redis, PARTITIONS)
            [poison] = [ev for ev in events if getattr(ev, "output", None) == big]
            assert await snapshot(small_packets) == fold([ev for ev in events if ev is not poison])
            [entry] = await quarantined(small_packets)
            assert entry["stream_id"] == poison.id and "max_allowed_packet" in entry["error"]
            assert len(entry["body"]) > 300_000  # stored in pieces, each fitting a statement
            assert [r.getMessage() for r in caplog.records if poison.id in r.getMessage()]

            server.sql("SET GLOBAL max_allowed_packet = 4194304")  # the fix (new connections get it)
            code, out, err = await orq_retry(server.url("orq"), "--all")
            assert code == 0, (out, err)
    assert await quarantined(small_packets) == []
    steps = schema.execution_steps
    async with small_packets.connect() as conn:
        output = (await conn.execute(select(steps.c.output_data).where(
            steps.c.execution_id == poison.aggregate_id, steps.c.step_index == 0))).scalar_one()
    assert output == big


async def orq_retry(database_url: str, *args: str) -> tuple[int, str, str]:
    env = orq_env(ORQ_REDIS_URL=REDIS_URL, ORQ_DATABASE_URL=database_url, ORQ_PARTITIONS=str(PARTITIONS))
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "orquesta", "quarantine", "retry", *args,
                                                env=env, cwd=ROOT, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=90)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_a_database_outage_is_retried_and_quarantines_nothing(
    redis: Redis, small_packets: AsyncEngine, server: PrivateMariadb, caplog: pytest.LogCaptureFixture
) -> None:
    """The server goes away (connections lost, then refused) and comes back: the batch waits for it."""
    poisoned, healthy = same_partition_tenants(2)
    setup = timed(tenant_setup(healthy) + tenant_setup(poisoned))
    await append(redis, setup, PARTITIONS)
    live = projector(redis, small_packets, PARTITIONS)
    with caplog.at_level(logging.WARNING, logger="services.projector.projector"):
        async with running(live):
            await caught_up(redis, small_packets, PARTITIONS, timeout=30)
            server.stop()
            try:
                more = timed(run(healthy, exec_id(healthy, 1)) + run(poisoned, exec_id(poisoned, 1)),
                             start_ms=setup[-1].ts + 7)
                await append(redis, more, PARTITIONS)

                async def failed_twice() -> None:
                    assert len([r for r in caplog.records if "batch failed" in r.getMessage()]) >= 2

                await assert_eventually(failed_twice, timeout=30)
            finally:
                server.start()
            await caught_up(redis, small_packets, PARTITIONS, timeout=60)
    assert live.quarantined == 0
    assert await quarantined(small_packets) == []
    assert await snapshot(small_packets) == fold(await stream_events(redis, PARTITIONS))
