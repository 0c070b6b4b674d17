"""Enqueue→start latency at a steady arrival rate: queued event to started event, by stream ids (Redis' clock).

Stream ids are whole milliseconds, so a p50 of 0 or 1 ms is at the resolution of the measurement; BullMQ's peer
rows are timed with a sub-millisecond clock.
"""

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
from bench.peers import bullmq
from shared.domain import commit_script
from shared.log import keys
from shared.log.consumer import records_of


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def latency_rows() -> list[Result]:
    """The suite: 500/s for 10 s (the target row), then 5,000/s for a short 4 s (20,000 runs), each beside
    BullMQ's rows at the same rate."""
    return await enqueue_to_start(500, 10.0) + await enqueue_to_start(5000, 4.0, p99_target="report")


async def enqueue_to_start(rate: int = 500, seconds: float = 10.0, p99_target: str = "<= 10 ms") -> list[Result]:
    redis = await fresh_redis()
    committer = commit_script.committer(redis)
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
        Result(f"enqueue->start p50 at {rate}/s", _percentile(latencies, 0.50), "ms", "", f"{len(latencies)} runs",
               peer=bullmq.latency_row("p50", rate)),
        Result(f"enqueue->start p99 at {rate}/s", _percentile(latencies, 0.99), "ms", p99_target, "2 executors",
               peer=bullmq.latency_row("p99", rate)),
    ]
