"""``orq replay`` rebuilds the work-queue tables as the live projector made them (SQLite and MariaDB)."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from services.projector.replay import replay
from shared.domain import commit_script
from shared.domain.queues.claims import abandon_due, claim_unit, claimed_id, complete_unit, fail_unit, progress_unit
from shared.domain.queues.definitions import create_unit, delete_unit, read_queue, update_unit
from shared.domain.queues.items import NewItem, add_unit, read_item
from shared.infra.clock import new_id, now_ms
from shared.infra.settings import Settings
from shared.log.commit import Applied, Committer
from shared.log.events import QueueSnapshot
from tests.projector.factories import fold, snapshot, stream_events
from tests.projector.helpers import caught_up, projector, running

PARTITIONS = 4
QUEUE_TABLES = ("work_queues", "queue_items", "queue_item_data", "queue_item_history")


async def _work(redis: Redis, committer: Committer, tenant: str, now: int) -> None:
    """A day in a queue's life: bulk add, claims, progress, completions, both failure kinds, an abandonment."""
    p = 1
    queue_id = new_id()
    snap = QueueSnapshot(name=f"q-{tenant[:4]}", max_retries=1, abandon_after_minutes=1, created_at=now,
                         updated_at=now)
    assert isinstance(await committer.commit(create_unit(p=p, tenant_id=tenant, queue_id=queue_id, snapshot=snap,
                                                         now_ms=now)), Applied)
    queue = await read_queue(redis, p, queue_id)
    assert queue is not None
    # One priority: retries (added later) rank after every original, so the claims below take originals only.
    items = [NewItem(id=new_id(), data={"n": n, "nested": {"x": [n, 1.5]}}, reference=f"R{n}")
             for n in range(30)]
    assert isinstance(await committer.commit(add_unit(p=p, tenant_id=tenant, queue=queue, items=items, now_ms=now)),
                      Applied)
    for n in range(24):
        item_id = claimed_id(await committer.commit(claim_unit(p=p, queue=queue, claimer=f"r{n % 3}", now_ms=now)))
        assert item_id is not None
        item = await read_item(redis, p, item_id)
        assert item is not None
        match n % 4:
            case 0:
                unit = complete_unit(p=p, item=item, result={"ok": n}, now_ms=now + 5)
            case 1:
                unit = fail_unit(p=p, item=item, queue=queue, kind="application", message=f"e{n}", now_ms=now + 5)
            case 2:
                unit = fail_unit(p=p, item=item, queue=queue, kind="business", message=f"b{n}", now_ms=now + 5)
            case _:
                unit = progress_unit(p=p, item=item, progress="half", now_ms=now + 5)
        assert isinstance(await committer.commit(unit), Applied)
    await abandon_due(redis, committer, p, now + 60_000)
    renamed = QueueSnapshot(name="renamed", max_retries=1, created_at=now, updated_at=now + 70_000)
    assert isinstance(await committer.commit(update_unit(p=p, queue=queue, snapshot=renamed, now_ms=now + 70_000)),
                      Applied)
    if tenant.startswith("b"):
        queue = await read_queue(redis, p, queue_id)
        assert queue is not None
        assert isinstance(await committer.commit(delete_unit(p=p, queue=queue, now_ms=now + 80_000)), Applied)


@pytest.mark.slow
async def test_replay_rebuilds_the_queue_tables(redis: Redis, engine: AsyncEngine, settings: Settings) -> None:
    committer = commit_script.committer(redis)
    now = now_ms()
    try:
        await _work(redis, committer, "a" * 32, now)
        await _work(redis, committer, "b" * 32, now)
    finally:
        await committer.close()
    async with running(projector(redis, engine, PARTITIONS, batch=17)):
        await caught_up(redis, engine, PARTITIONS)
    live = await snapshot(engine)
    assert {t: len(live[t]) for t in QUEUE_TABLES} == {
        "work_queues": 2, "queue_items": 2 * (30 + 6 + 6),  # retries of the application failures and abandonments
        "queue_item_data": 2 * 42, "queue_item_history": len([
            e for e in await stream_events(redis, PARTITIONS) if e.aggregate_id != e.tenant_id and
            type(e).__name__.startswith("QueueItem")]),
    }
    statuses = sorted(r["status"] for r in live["queue_items"] if r["tenant_id"] == "a" * 32)
    assert statuses.count("completed") == 6 and statuses.count("retried") == 12 and statuses.count("failed") == 6
    assert statuses.count("new") == 6 + 12  # six never claimed, twelve retries

    assert await replay(settings, show_progress=False) > 0
    rebuilt = await snapshot(engine)
    assert {t: rebuilt[t] for t in QUEUE_TABLES} == {t: live[t] for t in QUEUE_TABLES}
    assert {t: rebuilt[t] for t in QUEUE_TABLES} == {t: fold(await stream_events(redis, PARTITIONS))[t]
                                                     for t in QUEUE_TABLES}
