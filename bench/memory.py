"""Redis memory per ended execution, before and after ``ORQ_STATE_RETENTION_S`` drops its state.

``count`` pre-queued noop runs are drained by an ``orq executor`` with no projector running: every ended
execution keeps its hash. Then ``orq projector`` (SQLite, retention 1 s) projects them, and the hashes
expire. The log streams are left out of both figures: ``orq maintenance`` trims them, not retention.
``used_memory`` is the whole instance's: other databases' activity on the same Redis shows as noise.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from redis.asyncio import Redis

from bench.common import (
    PARTITIONS,
    Result,
    drained,
    env,
    fresh_redis,
    processes,
    queue_units,
    seed_workflow,
    wait_until,
)
from shared.domain import commit_script
from shared.log import keys

SETTLE_S = 2.0


async def _state_bytes(redis: Redis, base: int) -> int:
    """``used_memory`` above ``base``, less what the log streams hold."""
    used = int((await redis.info("memory"))["used_memory"])
    logs = sum([int(await redis.memory_usage(keys.log(p), samples=0) or 0) for p in range(PARTITIONS)])
    return used - logs - base


async def _exec_hashes(redis: Redis) -> int:
    return len([k async for k in redis.scan_iter(match="orq:*:exec:*", count=5000)])


async def state_retention(count: int = 10_000) -> list[Result]:
    redis = await fresh_redis()
    committer = commit_script.committer(redis)
    workflow = await seed_workflow(committer, "bench-memory")
    base = await _state_bytes(redis, 0)
    await committer.commit_all(queue_units(workflow, count))
    await committer.close()
    with tempfile.TemporaryDirectory() as tmp:
        e = env(ORQ_EXECUTOR_CONCURRENCY="200", ORQ_STATE_RETENTION_S="1",
                ORQ_DATABASE_URL=f"sqlite+aiosqlite:///{Path(tmp) / 'orq.db'}")
        with processes((["executor"], e)):
            await wait_until(lambda: drained(redis), timeout=600)
        before = await _state_bytes(redis, base)
        with processes((["projector"], e)):
            seconds = await wait_until(lambda: _gone(redis), timeout=600, interval=0.2)
            await asyncio.sleep(SETTLE_S)  # Redis shrinks its emptied key tables in its background cron
            after = await _state_bytes(redis, base)
    await redis.aclose()
    return [
        Result(f"memory: Redis state per ended execution ({count} noop runs), before retention", before / count,
               "bytes", "report", "used_memory, log streams excluded"),
        Result("memory: the same after ORQ_STATE_RETENTION_S (1 s here)", after / count, "bytes", "~0",
               f"every hash gone {seconds:.1f}s after the projector started"),
    ]


async def _gone(redis: Redis) -> bool:
    return await _exec_hashes(redis) == 0
