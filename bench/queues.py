"""Work queues: bulk add of 10,000 items (items/s) and claim+complete cycles/s with 8 concurrent robots.

Both through a real ``orq api`` process over HTTP (JSON in and out, auth, validation, the commit script), plus
the claim+complete cycle without HTTP (the units straight through a group committer) to show the ceiling the
Redis side sets.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from aiohttp import ClientSession
from redis.asyncio import Redis

from bench.common import Result, env, fresh_redis, processes
from bench.http import call, free_port, session, wait_ready
from shared.domain import commit_script
from shared.domain.queues.claims import claim_unit, claimed_id, complete_unit
from shared.domain.queues.definitions import QueueState, create_unit, read_queue
from shared.domain.queues.items import NewItem, add_unit, read_item
from shared.infra.clock import new_id, now_ms
from shared.log.commit import Applied
from shared.log.events import QueueSnapshot

BULK = 10_000
ROBOTS = 8
CYCLES = 4_000


async def _bulk_rate(client: ClientSession, auth: str, queue_id: str, rounds: int = 3) -> float:
    """Median items/s of ``rounds`` bulk calls of 10,000 items (each a realistic small invoice)."""
    rates = []
    for r in range(rounds):
        items = [{"data": {"invoice": f"INV-{r}-{n}", "amount": n * 1.5, "vendor": "ACME"},
                  "reference": f"INV-{r}-{n}", "priority": 1 + n % 10} for n in range(BULK)]
        start = time.perf_counter()
        await call(client, "POST", f"/api/queues/{queue_id}/items/bulk", {"items": items}, auth)
        rates.append(BULK / (time.perf_counter() - start))
    return statistics.median(rates)


async def _robots_http(client: ClientSession, auth: str, queue_id: str, cycles: int) -> float:
    """Cycles/s of ``ROBOTS`` robots each looping next → complete until ``cycles`` items are done."""
    done = 0

    async def robot(name: str) -> None:
        nonlocal done
        while done < cycles:
            item = await call(client, "POST", f"/api/queues/{queue_id}/items/next", {"robot": name}, auth)
            if item is None:
                return
            await call(client, "PUT", f"/api/queues/{queue_id}/items/{item['id']}",
                       {"status": "completed", "result": {"ok": True}}, auth)
            done += 1

    start = time.perf_counter()
    await asyncio.gather(*(robot(f"robot-{n}") for n in range(ROBOTS)))
    return done / (time.perf_counter() - start)


async def _over_http(redis: Redis) -> tuple[float, float]:
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        e = env(ORQ_DATABASE_URL=f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}",
                ORQ_MAX_BODY_BYTES=str(16 * 1024 * 1024))
        with processes((["api", "--port", str(port)], e)):
            async with session(f"http://127.0.0.1:{port}", ROBOTS + 2) as client:
                await wait_ready(client)
                created = await call(client, "POST", "/api/tenants", {"name": "bench", "plan": "bench"},
                                     "Bearer bench-admin")
                auth = f"Bearer {created['api_key']}"
                bulk_queue = (await call(client, "POST", "/api/queues", {"name": "bulk"}, auth))["id"]
                bulk = await _bulk_rate(client, auth, bulk_queue)
                work_queue = (await call(client, "POST", "/api/queues", {"name": "work"}, auth))["id"]
                await call(client, "POST", f"/api/queues/{work_queue}/items/bulk",
                           {"items": [{"data": {"n": n}} for n in range(CYCLES)]}, auth)
                cycles = await _robots_http(client, auth, work_queue, CYCLES)
    return bulk, cycles


async def _robots_units(redis: Redis, cycles: int) -> float:
    """Cycles/s of ``ROBOTS`` coroutines claiming and completing through units (no HTTP, no JSON)."""
    committer = commit_script.committer(redis)
    now = now_ms()
    queue_id = new_id()
    snap = QueueSnapshot(name="units", created_at=now, updated_at=now)
    assert isinstance(await committer.commit(create_unit(p=0, tenant_id="bench", queue_id=queue_id, snapshot=snap,
                                                         now_ms=now)), Applied)
    queue = await read_queue(redis, 0, queue_id)
    assert isinstance(queue, QueueState)
    items = [NewItem(id=new_id(), data={"n": n}) for n in range(cycles)]
    assert isinstance(await committer.commit(add_unit(p=0, tenant_id="bench", queue=queue, items=items, now_ms=now)),
                      Applied)
    done = 0

    async def robot(name: str) -> None:
        nonlocal done
        while True:
            item_id = claimed_id(await committer.commit(claim_unit(p=0, queue=queue, claimer=name, now_ms=now_ms())))
            if item_id is None:
                return
            item = await read_item(redis, 0, item_id)
            assert item is not None
            outcome = await committer.commit(complete_unit(p=0, item=item, result=None, now_ms=now_ms()))
            assert isinstance(outcome, Applied)
            done += 1

    start = time.perf_counter()
    await asyncio.gather(*(robot(f"robot-{n}") for n in range(ROBOTS)))
    elapsed = time.perf_counter() - start
    await committer.close()
    return done / elapsed


async def queue_throughput() -> list[Result]:
    redis = await fresh_redis()
    try:
        bulk, cycles = await _over_http(redis)
        await redis.flushdb()
        units = await _robots_units(redis, CYCLES)
    finally:
        await redis.flushdb()
        await redis.aclose()
    return [
        Result(f"queues: bulk add of {BULK:,} items, one call (HTTP)", bulk, "items/s", "report",
               "median of 3; validation + one commit script"),
        Result(f"queues: claim+complete, {ROBOTS} robots (HTTP)", cycles, "cycles/s", "report",
               f"{CYCLES:,} items, 1 api process"),
        Result(f"queues: claim+complete, {ROBOTS} robots (units)", units, "cycles/s", "report",
               "no HTTP: group-committed units"),
    ]
