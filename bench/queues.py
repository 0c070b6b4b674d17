"""Work queues: bulk add of 10,000 items (items/s) and claim+complete cycles/s with 8 concurrent robots.

Both through a real ``orq api`` process over HTTP (JSON in and out, auth, validation, the commit script), plus
the claim+complete cycle without HTTP (the units straight through a group committer) to show the ceiling the
Redis side sets.
"""

from __future__ import annotations

import asyncio
import socket
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from redis.asyncio import Redis

from bench.common import Result, env, fresh_redis, processes
from shared.clock import new_id, now_ms
from shared.commit import Applied, Committer
from shared.events import QueueSnapshot
from shared.queues import QueueState, create_unit, read_queue
from shared.queues_claims import claim_unit, claimed_id, complete_unit
from shared.queues_items import NewItem, add_unit, read_item

BULK = 10_000
ROBOTS = 8
CYCLES = 4_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _ready(base: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=base) as client:
        while True:
            try:
                if (await client.get("/readyz", timeout=1)).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("orq api did not start")
            await asyncio.sleep(0.1)


async def _bulk_rate(client: httpx.AsyncClient, queue_id: str, rounds: int = 3) -> float:
    """Median items/s of ``rounds`` bulk calls of 10,000 items (each a realistic small invoice)."""
    rates = []
    for r in range(rounds):
        items = [{"data": {"invoice": f"INV-{r}-{n}", "amount": n * 1.5, "vendor": "ACME"},
                  "reference": f"INV-{r}-{n}", "priority": 1 + n % 10} for n in range(BULK)]
        start = time.perf_counter()
        reply = await client.post(f"/api/queues/{queue_id}/items/bulk", json={"items": items}, timeout=120)
        elapsed = time.perf_counter() - start
        assert reply.status_code == 201, reply.text
        rates.append(BULK / elapsed)
    return statistics.median(rates)


async def _robots_http(client: httpx.AsyncClient, queue_id: str, cycles: int) -> float:
    """Cycles/s of ``ROBOTS`` robots each looping next → complete until ``cycles`` items are done."""
    done = 0

    async def robot(name: str) -> None:
        nonlocal done
        while done < cycles:
            reply = await client.post(f"/api/queues/{queue_id}/items/next", json={"robot": name})
            if reply.status_code == 204:
                return
            item = reply.json()
            put = await client.put(f"/api/queues/{queue_id}/items/{item['id']}",
                                   json={"status": "completed", "result": {"ok": True}})
            assert put.status_code == 200, put.text
            done += 1

    start = time.perf_counter()
    await asyncio.gather(*(robot(f"robot-{n}") for n in range(ROBOTS)))
    return done / (time.perf_counter() - start)


async def _over_http(redis: Redis) -> tuple[float, float]:
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        e = env(ORQ_DATABASE_URL=f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}",
                ORQ_MAX_BODY_BYTES=str(16 * 1024 * 1024))
        with processes((["api", "--port", str(port)], e)):
            await _ready(base)
            async with httpx.AsyncClient(base_url=base, timeout=30,
                                         limits=httpx.Limits(max_connections=ROBOTS + 2)) as client:
                created = await client.post("/api/tenants", json={"name": "bench", "plan": "bench"},
                                            headers={"Authorization": "Bearer bench-admin"})
                client.headers["Authorization"] = f"Bearer {created.json()['api_key']}"
                bulk_queue = (await client.post("/api/queues", json={"name": "bulk"})).json()["id"]
                bulk = await _bulk_rate(client, bulk_queue)
                work_queue = (await client.post("/api/queues", json={"name": "work"})).json()["id"]
                await client.post(f"/api/queues/{work_queue}/items/bulk",
                                  json={"items": [{"data": {"n": n}} for n in range(CYCLES)]}, timeout=120)
                cycles = await _robots_http(client, work_queue, CYCLES)
    return bulk, cycles


async def _robots_units(redis: Redis, cycles: int) -> float:
    """Cycles/s of ``ROBOTS`` coroutines claiming and completing through units (no HTTP, no JSON)."""
    committer = Committer(redis)
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
