"""The machine's yardstick: a bare redis-py stream consumer, the issue's reference point (~13,000–17,000/s).

Benchmarks taken on different days or machines are only comparable next to this row: the same Orquesta code
measured ~3,800 and ~11,500 executions/s on two "2-core" machines, and only a yardstick run beside them tells
a slower machine from a slower build.
"""

from __future__ import annotations

import asyncio
import time

from bench.common import Result, fresh_redis

STREAM = "reference:stream"
GROUP = "reference"


async def bare_consumer(count: int = 20_000, consumers: int = 4, batch: int = 50) -> list[Result]:
    """Messages/s for ``consumers`` coroutines reading ``batch`` at a time and acking each message alone."""
    redis = await fresh_redis()
    async with redis.pipeline(transaction=False) as pipe:
        for _ in range(count):
            pipe.xadd(STREAM, {"d": b"x" * 50})
        await pipe.execute()
    await redis.xgroup_create(STREAM, GROUP, id="0")
    done = 0

    async def consume(name: str) -> None:
        nonlocal done
        while done < count:
            reply = await redis.xreadgroup(GROUP, name, {STREAM: ">"}, count=batch, block=100)
            for _, entries in reply:
                for entry_id, _ in entries:
                    await redis.xack(STREAM, GROUP, entry_id)
                done += len(entries)

    start = time.perf_counter()
    await asyncio.gather(*(consume(f"c{i}") for i in range(consumers)))
    rate = count / (time.perf_counter() - start)
    await redis.aclose()
    return [Result("reference: bare redis-py stream consumer", rate, "msg/s", "~13,000-17,000",
                   "the issue's yardstick for this machine: XREADGROUP + one XACK per message")]
