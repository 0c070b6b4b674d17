"""A projector process that dies (``os._exit``) right after its Nth commit, before the ack: for crash tests.

Usage: ``python -m tests.projector.crash_projector REDIS_URL DATABASE_URL PARTITIONS BATCH CRASH_AFTER``.
"""

from __future__ import annotations

import asyncio
import os
import sys

from services.projector.projector import Projector
from shared.log.redis import connect
from shared.readmodel.db import create_engine

CRASH_EXIT_CODE = 17
NO_CRASH_EXIT_CODE = 3
WATCHDOG_S = 60
LOCK_TTL_MS = 1_000


async def main(redis_url: str, database_url: str, partitions: int, batch: int, crash_after: int) -> None:
    commits = 0

    def after_commit(p: int, last_id: str) -> None:
        nonlocal commits
        commits += 1
        if commits >= crash_after:
            print(f"crashing after commit of partition {p} up to {last_id}", flush=True)
            os._exit(CRASH_EXIT_CODE)

    engine = create_engine(database_url)
    redis = connect(redis_url)
    projector = Projector(redis, engine, partitions=partitions, batch=batch, lock_ttl_ms=LOCK_TTL_MS,
                          idle_block_ms=100, after_commit=after_commit)
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(WATCHDOG_S, stop.set)  # never outlive a test that died
    await projector.run(stop)
    sys.exit(NO_CRASH_EXIT_CODE)


if __name__ == "__main__":
    redis_url, database_url, partitions, batch, crash_after = sys.argv[1:6]
    asyncio.run(main(redis_url, database_url, int(partitions), int(batch), int(crash_after)))
