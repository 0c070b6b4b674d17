"""Throughput of the projector and of replay on real Redis and SQL.

``python -m tests.projector.bench --db mysql --events 60000`` (or ``--db sqlite``). Uses Redis DB 10 and
the MariaDB database ``orq_projector_bench`` (created if missing); both are wiped.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import tempfile
import time

from sqlalchemy import text

from services.projector.projector import Projector
from services.projector.replay import Replayer
from shared.infra.settings import PROJECTOR_BATCH
from shared.log.redis import connect
from shared.readmodel.db import create_engine, create_schema
from shared.readmodel.schema import metadata
from tests.projector.factories import append, random_history
from tests.projector.helpers import caught_up

REDIS_URL = "redis://127.0.0.1:6379/10"
MYSQL_SERVER = "mysql+aiomysql://root@127.0.0.1:3306"
MYSQL_DB = "orq_projector_bench"


async def _database_url(kind: str) -> str:
    if kind == "sqlite":
        return f"sqlite+aiosqlite:///{tempfile.mkdtemp()}/bench.db"
    server = create_engine(f"{MYSQL_SERVER}/mysql")
    async with server.begin() as conn:
        await conn.execute(text(f"CREATE DATABASE IF NOT EXISTS {MYSQL_DB} CHARACTER SET utf8mb4"))
    await server.dispose()
    return f"{MYSQL_SERVER}/{MYSQL_DB}"


async def main(kind: str, events: int, partitions: int, batch: int) -> tuple[float, float]:
    """Project then replay ``events`` generated events; returns (projector, replay) events per second."""
    url = await _database_url(kind)
    engine = create_engine(url)
    async with engine.begin() as conn:
        await conn.run_sync(metadata.drop_all)
    await create_schema(engine)
    redis = connect(REDIS_URL)
    await redis.flushdb()

    history = []
    seed = 0
    while len(history) < events:
        history += random_history(seed, tenants=4, executions=100, prefix=f"b{seed}-")
        seed += 1
    t0 = time.perf_counter()
    await append(redis, history, partitions)
    print(f"appended {len(history)} events in {time.perf_counter() - t0:.1f}s")

    projector = Projector(redis, engine, partitions=partitions, batch=batch)
    stop = asyncio.Event()
    c0, t0 = time.process_time(), time.perf_counter()
    task = asyncio.create_task(projector.run(stop))
    deadline = time.monotonic() + 300
    while projector.applied < len(history):
        if time.monotonic() > deadline or task.done():
            raise SystemExit(f"projector stuck at {projector.applied}/{len(history)}; holds {sorted(projector.held)}")
        await asyncio.sleep(0.01)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    stop.set()
    await task
    await caught_up(redis, engine, partitions, timeout=60)
    projected = len(history) / elapsed
    print(f"{kind} projector: {len(history)} events in {elapsed:.2f}s = {len(history) / elapsed:,.0f} events/s "
          f"(batch {batch}, {partitions} partitions; {cpu / len(history) * 1e6:.0f} µs CPU per event)")

    c0, t0 = time.process_time(), time.perf_counter()
    count = await Replayer(redis, engine, partitions=partitions).run()
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(f"{kind} replay: {count} events in {elapsed:.2f}s = {count / elapsed:,.0f} events/s "
          f"({cpu / count * 1e6:.0f} µs CPU per event)")
    await redis.flushdb()
    await redis.aclose()
    await engine.dispose()
    return projected, count / elapsed


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", choices=["sqlite", "mysql"], default="mysql")
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--batch", type=int, default=PROJECTOR_BATCH)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main(args.db, args.events, args.partitions, args.batch))
