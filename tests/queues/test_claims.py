"""Claims, finishes and abandonment on the real Redis, with an injected clock: the commit script's claim op,
the known-item claim the queue_item trigger composes into its own unit, and abandonment past its time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from services.trigger.abandon import sweep_abandoned
from shared.domain import commit_script
from shared.domain.queues.claims import (
    abandon_due,
    claim_item,
    claim_unit,
    claimed_id,
    complete_unit,
    fail_unit,
    next_ready,
)
from shared.domain.queues.definitions import QueueState, create_unit, delete_unit, read_queue
from shared.domain.queues.items import ItemState, NewItem, add_unit, read_item
from shared.infra.clock import new_id
from shared.infra.settings import Settings
from shared.log import keys
from shared.log.commit import Applied, Committer, Refused, Unit
from shared.log.consumer import records_of
from shared.log.events import QueueSnapshot
from tests.helpers import assert_eventually

P = 1
TENANT = "t" * 32
NOW = 1_768_000_000_000
MINUTE = 60_000


@pytest.fixture
async def committer(redis: Redis) -> AsyncIterator[Committer]:
    c = commit_script.committer(redis)
    yield c
    await c.close()


async def make_queue(redis: Redis, committer: Committer, **settings: object) -> QueueState:
    queue_id = new_id()
    snap = QueueSnapshot(name=queue_id, created_at=NOW, updated_at=NOW, **settings)  # type: ignore[arg-type]
    assert isinstance(await committer.commit(create_unit(p=P, tenant_id=TENANT, queue_id=queue_id, snapshot=snap,
                                                         now_ms=NOW)), Applied)
    queue = await read_queue(redis, P, queue_id)
    assert queue is not None
    return queue


async def add(committer: Committer, queue: QueueState, *items: NewItem, now: int = NOW) -> None:
    assert isinstance(await committer.commit(add_unit(p=P, tenant_id=TENANT, queue=queue, items=items, now_ms=now)),
                      Applied)


async def claim(committer: Committer, queue: QueueState, now: int = NOW, claimer: str = "robot") -> str | None:
    return claimed_id(await committer.commit(claim_unit(p=P, queue=queue, claimer=claimer, now_ms=now)))


async def item(redis: Redis, item_id: str) -> ItemState:
    state = await read_item(redis, P, item_id)
    assert state is not None
    return state


async def types(redis: Redis) -> list[str]:
    return [r.type for r in records_of(await redis.xrange(keys.log(P)))]  # type: ignore[arg-type]


async def test_bulk_order_and_deferral(redis: Redis, committer: Committer) -> None:
    queue = await make_queue(redis, committer)
    items = [NewItem(id=f"b{n:031d}", data={"n": n}) for n in range(12)]  # one bulk: same ms, kept in order
    deferred = NewItem(id="d" * 32, data={}, priority=1, defer_until=NOW + 5_000)
    await add(committer, queue, *items, deferred)

    assert await next_ready(redis, P, queue.id, NOW, 3) == [i.id for i in items[:3]]
    assert [await claim(committer, queue) for _ in range(12)] == [i.id for i in items]
    assert await claim(committer, queue) is None
    assert await next_ready(redis, P, queue.id, NOW + 5_000) == [deferred.id]
    assert await claim(committer, queue, now=NOW + 5_000) == deferred.id


async def test_two_hundred_claims_in_one_batch_take_each_item_once(redis: Redis, committer: Committer) -> None:
    queue = await make_queue(redis, committer)
    await add(committer, queue, *(NewItem(id=new_id(), data={"n": n}) for n in range(100)))

    outcomes = await committer.commit_all([claim_unit(p=P, queue=queue, claimer=f"r{n}", now_ms=NOW)
                                           for n in range(200)])

    claimed = [claimed_id(o) for o in outcomes]
    assert len({c for c in claimed if c}) == 100 and claimed.count(None) == 100
    assert (await types(redis)).count("queue_item.started") == 100


async def test_a_stale_rank_is_skipped(redis: Redis, committer: Committer) -> None:
    queue = await make_queue(redis, committer)
    await add(committer, queue, NewItem(id="a" * 32, data={}), NewItem(id="b" * 32, data={}))
    await redis.hset(keys.queue_item(P, "a" * 32), "status", "completed")  # as if finished behind our back

    assert await claim(committer, queue) == "b" * 32
    assert await redis.zcard(keys.queue_ready(P, queue.id)) == 0


async def test_claims_on_a_deleted_queue_are_refused(redis: Redis, committer: Committer) -> None:
    queue = await make_queue(redis, committer)
    await add(committer, queue, NewItem(id=new_id(), data={}))
    assert isinstance(await committer.commit(delete_unit(p=P, queue=queue, now_ms=NOW)), Applied)

    assert isinstance(await committer.commit(claim_unit(p=P, queue=queue, claimer="r", now_ms=NOW)), Refused)


async def test_claim_item_goes_with_the_callers_unit_or_not_at_all(redis: Redis, committer: Committer) -> None:
    queue = await make_queue(redis, committer)
    await add(committer, queue, NewItem(id="x" * 32, data={"n": 1}))
    x = await item(redis, "x" * 32)
    first = claim_item(Unit(P).set("other-effect", "1"), item=x, queue=queue, claimer="trigger:1", now_ms=NOW,
                       execution_id="e" * 32)
    second = claim_item(Unit(P).set("other-effect-2", "1"), item=x, queue=queue, claimer="trigger:1", now_ms=NOW)

    outcomes = await committer.commit_all([first, second])

    assert isinstance(outcomes[0], Applied) and isinstance(outcomes[1], Refused)
    assert await redis.get("other-effect-2") is None
    claimed = await item(redis, "x" * 32)
    assert claimed.status == "in_progress" and claimed.snapshot.execution_id == "e" * 32
    assert await claim(committer, queue) is None  # no longer in the ready set


async def test_finishing_twice_is_refused(redis: Redis, committer: Committer) -> None:
    queue = await make_queue(redis, committer)
    await add(committer, queue, NewItem(id="x" * 32, data={}))
    await claim(committer, queue)
    x = await item(redis, "x" * 32)

    assert isinstance(await committer.commit(complete_unit(p=P, item=x, result=1, now_ms=NOW + 5)), Applied)
    assert isinstance(await committer.commit(complete_unit(p=P, item=x, result=2, now_ms=NOW + 6)), Refused)
    done = await item(redis, "x" * 32)
    assert done.status == "completed" and done.snapshot.processing_ms == 5
    assert await redis.zscore(keys.queue_due(P), "x" * 32) is None


async def test_abandoned_after_its_time_then_retried_then_final(redis: Redis, committer: Committer) -> None:
    queue = await make_queue(redis, committer, max_retries=1, abandon_after_minutes=2)
    await add(committer, queue, NewItem(id="x" * 32, data={"n": 7}, reference="R-7"))
    await claim(committer, queue, now=NOW)

    assert await abandon_due(redis, committer, P, NOW + 2 * MINUTE - 1) == 0
    assert (await item(redis, "x" * 32)).status == "in_progress"
    assert await abandon_due(redis, committer, P, NOW + 2 * MINUTE) == 1

    old = await item(redis, "x" * 32)
    assert old.status == "retried" and old.snapshot.retry_id is not None and old.snapshot.finished_at is not None
    retry_id = await claim(committer, queue, now=NOW + 3 * MINUTE)
    assert retry_id == old.snapshot.retry_id
    retry = await item(redis, retry_id)
    assert retry.data() == {"n": 7} and retry.snapshot.reference == "R-7" and retry.snapshot.retry_count == 1

    # The robot that held the first claim comes back too late: nothing changes.
    late = complete_unit(p=P, item=old, result=None, now_ms=NOW + 3 * MINUTE)
    assert isinstance(await committer.commit(late), Refused)

    assert await abandon_due(redis, committer, P, NOW + 5 * MINUTE) == 1  # no retries left: final
    assert (await item(redis, retry_id)).status == "abandoned"
    assert await claim(committer, queue, now=NOW + 6 * MINUTE) is None
    assert [t for t in await types(redis) if t.startswith("queue_item.")] == [
        "queue_item.added", "queue_item.started", "queue_item.abandoned", "queue_item.retried", "queue_item.added",
        "queue_item.started", "queue_item.abandoned",
    ]


async def test_business_failure_is_not_retried(redis: Redis, committer: Committer) -> None:
    queue = await make_queue(redis, committer, max_retries=5)
    await add(committer, queue, NewItem(id="x" * 32, data={}))
    await claim(committer, queue)
    unit = fail_unit(p=P, item=await item(redis, "x" * 32), queue=queue, kind="business", message="no", now_ms=NOW)
    assert isinstance(await committer.commit(unit), Applied)
    assert (await item(redis, "x" * 32)).status == "failed"
    assert await claim(committer, queue) is None


async def test_the_trigger_service_sweep_abandons_on_its_clock(
    redis: Redis, committer: Committer, settings: Settings
) -> None:
    queue = await make_queue(redis, committer, max_retries=0, abandon_after_minutes=1)
    await add(committer, queue, NewItem(id="x" * 32, data={}))
    await claim(committer, queue, now=NOW)
    stop = asyncio.Event()
    now, sweeps = [NOW], [0]

    def clock() -> int:
        sweeps[0] += 1
        return now[0]

    sweeper = asyncio.create_task(sweep_abandoned(redis, committer, settings.with_overrides(queue_sweep_s=0.02),
                                                  stop, clock=clock))
    try:

        async def swept_thrice() -> None:
            assert sweeps[0] >= 3

        await assert_eventually(swept_thrice, timeout=5, message="sweeps at NOW")
        assert (await item(redis, "x" * 32)).status == "in_progress"  # nothing was due yet
        now[0] = NOW + MINUTE

        async def abandoned() -> None:
            assert (await item(redis, "x" * 32)).status == "abandoned"

        await assert_eventually(abandoned, timeout=5, message="swept")
    finally:
        stop.set()
        await asyncio.wait_for(sweeper, 5)
