"""Enqueue→start latency at a steady arrival rate: queued event to started event, by stream ids (Redis' clock)."""

from __future__ import annotations

import asyncio
import time

from bench.common import (
    PARTITIONS,
    Result,
    env,
    fresh_redis,
    processes,
    queue_units,
    seed_workflow,
    wait_until,
    work_left,
)
from shared import keys
from shared.commit import Committer
from shared.consumer import records_of


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def enqueue_to_start(rate: int = 500, seconds: float = 10.0) -> list[Result]:
    redis = await fresh_redis()
    committer = Committer(redis)
    workflows = [await seed_workflow(committer, f"lat-tenant-{t}") for t in range(8)]
    e = env(ORQ_EXECUTOR_CONCURRENCY="50")
    with processes((["executor"], e), (["executor"], e)):
        await asyncio.sleep(2.0)  # let both executors start and block on the empty streams
        total = int(rate * seconds)
        start = time.perf_counter()
        for n in range(total):
            [unit] = queue_units(workflows[n % len(workflows)], 1)
            committer.submit(unit)
            delay = start + (n + 1) / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)

        async def drained() -> bool:
            return await work_left(redis) == 0

        await wait_until(drained, timeout=120)
    await committer.close()
    queued: dict[str, int] = {}
    started: dict[str, int] = {}
    for p in range(PARTITIONS):
        for record in records_of(await redis.xrange(keys.log(p))):
            ms = int(record.id.split("-")[0])
            if record.type == "execution.queued":
                queued[record.event().aggregate_id] = ms
            elif record.type == "execution.started":
                started.setdefault(record.event().aggregate_id, ms)
    latencies = [started[i] - queued[i] for i in queued if i in started]
    await redis.aclose()
    return [
        Result(f"enqueue->start p50 at {rate}/s", _percentile(latencies, 0.50), "ms", "", f"{len(latencies)} runs"),
        Result(f"enqueue->start p99 at {rate}/s", _percentile(latencies, 0.99), "ms", "<= 10 ms", "2 executors"),
    ]
