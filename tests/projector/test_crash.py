"""A projector killed between commit and ack (a real process, ``os._exit``), then restarted."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.infra.clock import stream_id_parts
from shared.log import keys
from tests.helpers import REDIS_URL
from tests.projector.crash_projector import CRASH_EXIT_CODE
from tests.projector.factories import append, fold, random_history, snapshot, stream_events
from tests.projector.helpers import archived, caught_up, checkpoints, projector, running

PARTITIONS = 4
ROOT = Path(__file__).resolve().parents[2]


async def test_crash_between_commit_and_ack_loses_and_doubles_nothing(
    redis: Redis, engine: AsyncEngine, database_url: str
) -> None:
    history = random_history(11, tenants=6, executions=40)
    await append(redis, history, PARTITIONS)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.projector.crash_projector", REDIS_URL, database_url, str(PARTITIONS), "20", "3",
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    finally:
        if proc.returncode is None:  # never leave a projector running behind the test
            proc.kill()
            await proc.wait()
    assert proc.returncode == CRASH_EXIT_CODE, (out, err.decode()[-3000:])

    # The crash window happened: some committed entries were never acked.
    marks = await checkpoints(engine)
    assert marks and await archived(engine) < len(history)
    committed_unacked = 0
    for p, mark in marks.items():
        for entry in await redis.xpending_range(keys.log(p), keys.GROUP_PROJECTOR, "-", "+", 1000):
            committed_unacked += stream_id_parts(entry["message_id"].decode()) <= stream_id_parts(mark)
    assert committed_unacked > 0

    async with running(projector(redis, engine, PARTITIONS, batch=20)):
        await caught_up(redis, engine, PARTITIONS, timeout=20)
    total = sum([await redis.xlen(keys.log(p)) for p in range(PARTITIONS)])
    assert total == len(history)
    assert await archived(engine) == total
    assert await snapshot(engine) == fold(await stream_events(redis, PARTITIONS))
