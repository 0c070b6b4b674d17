"""End to end through the HTTP API: from the execute command to the projected ``completed`` row in MariaDB.

Real processes: ``orq api``, two ``orq executor`` and ``orq projector``; the client is this process (aiohttp:
with httpx this bench measured its own client, ~330/s, instead of the API).
"""

from __future__ import annotations

import asyncio
import time

from sqlalchemy import func, select, text

from bench.common import BENCH_MYSQL_URL, Result, env, fresh_redis, processes
from bench.http import call, free_port, session, wait_ready
from shared.readmodel.db import create_engine
from shared.readmodel.schema import executions, metadata

ADMIN = "bench-admin"


async def _fresh_database() -> None:
    server_url, _, name = BENCH_MYSQL_URL.rpartition("/")
    server = create_engine(f"{server_url}/mysql")
    async with server.begin() as conn:
        await conn.execute(text(f"CREATE DATABASE IF NOT EXISTS {name}"))
    await server.dispose()
    engine = create_engine(BENCH_MYSQL_URL)
    async with engine.begin() as conn:
        await conn.run_sync(metadata.drop_all)
    await engine.dispose()


async def _completed() -> int:
    engine = create_engine(BENCH_MYSQL_URL)
    try:
        async with engine.connect() as conn:
            query = select(func.count()).select_from(executions).where(executions.c.status == "completed")
            return int((await conn.execute(query)).scalar_one())
    finally:
        await engine.dispose()


async def _wait_completed(count: int, timeout: float) -> None:
    deadline = time.perf_counter() + timeout
    while await _completed() < count:
        if time.perf_counter() > deadline:
            raise TimeoutError(f"fewer than {count} executions projected as completed")
        await asyncio.sleep(0.05)


async def end_to_end(bulk_runs: int = 10_000, single_runs: int = 5_000, clients: int = 32) -> list[Result]:
    redis = await fresh_redis()
    await redis.aclose()
    await _fresh_database()
    port = free_port()
    e = env(ORQ_DATABASE_URL=BENCH_MYSQL_URL, ORQ_EXECUTOR_CONCURRENCY="200")
    base = f"http://127.0.0.1:{port}"
    with processes((["api", "--port", str(port)], e), (["executor"], e), (["executor"], e), (["projector"], e)):
        async with session(base, clients) as client:
            await wait_ready(client)
            tenant = await call(client, "POST", "/api/tenants", {"name": "bench", "plan": "bench"}, f"Bearer {ADMIN}")
            auth = f"Bearer {tenant['api_key']}"
            noop = {"name": "noop", "steps": [{"action": "noop"}]}
            workflow = await call(client, "POST", "/api/workflows", noop, auth)
            url = f"/api/workflows/{workflow['id']}/execute"

            start = time.perf_counter()
            bodies = [{"runs": [{} for _ in range(1000)]} for _ in range(bulk_runs // 1000)]
            await asyncio.gather(*(call(client, "POST", f"{url}/bulk", body, auth) for body in bodies))
            accepted = time.perf_counter() - start
            await _wait_completed(bulk_runs, timeout=600)
            bulk_seconds = time.perf_counter() - start

            start = time.perf_counter()
            per_client = single_runs // clients

            async def one_client() -> None:
                for _ in range(per_client):
                    await call(client, "POST", url, {}, auth)

            await asyncio.gather(*(one_client() for _ in range(clients)))
            admitted = time.perf_counter() - start
            await _wait_completed(bulk_runs + per_client * clients, timeout=600)
            single_seconds = time.perf_counter() - start
    return [
        Result(f"e2e: {bulk_runs} runs by bulk execute -> projected completed", bulk_runs / bulk_seconds, "exec/s",
               ">= 2,000", f"MariaDB; bulk calls accepted in {accepted:.2f}s"),
        Result(f"e2e: {per_client * clients} single executes, {clients} clients", per_client * clients / single_seconds,
               "exec/s", "report", f"API admitted {per_client * clients / admitted:,.0f}/s"),
    ]
