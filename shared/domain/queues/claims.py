"""Processing queue items: claim, progress, complete or fail (with retries), and abandonment.

Two ways to claim, same events and state:

- :func:`claim_unit` (robots, ``POST /api/queues/{id}/items/next``): the ``qclaim`` commit op takes
  the first ready item inside the commit script, so concurrent claimers never race for the same item and
  nobody retries: one round trip per claim.
- :func:`claim_item` (the ``queue_item`` trigger): adds the claim of an item the caller already chose
  (:func:`next_ready`) to a unit of its own, typically the admission unit of the execution that will process
  it, guarded on the item still being ``new``: item and execution go together or not at all.

An item in progress is due for abandonment at ``started_at + abandon_after_minutes`` (the queue's setting
when it was claimed), recorded in the partition's ``qdue`` set. :func:`abandon_due` abandons the items past
it; the API runs it lazily before claims (at most once a second per partition), and the trigger service
periodically (``services/trigger/abandon.py``), so items of queues nobody claims from are abandoned too.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal, cast

import msgspec
from redis.asyncio import Redis

from shared.domain.queues.definitions import QUEUE_GONE_GUARD, QueueState, read_queue
from shared.domain.queues.items import ItemState, added, encode_snapshot, put_items, read_item
from shared.infra.clock import new_id
from shared.log import keys
from shared.log.commit import Applied, Committer, Outcome, Unit
from shared.log.events import (
    QueueItemAbandoned,
    QueueItemCompleted,
    QueueItemError,
    QueueItemFailed,
    QueueItemProgressed,
    QueueItemRetried,
    QueueItemSnapshot,
    QueueItemStarted,
    type_of,
)
from shared.log.redis import text

log = logging.getLogger(__name__)

ITEM_STATUS_GUARD = "item_status"
RUN_LINKED_GUARD = "run_linked"
TRIGGER_CLAIMER = "trigger:"  # + the trigger's id: ``processed_by`` of an item a queue_item trigger claimed
ABANDON_BATCH = 100
IN_PROGRESS = "in_progress"
# Attempts of a run started for a queue item (the execution's ``max_attempts``): the queue owns the item's
# retries (``max_retries``, a new item each), so the run's own retry policy does not repeat the work inside.
QUEUE_RUN_ATTEMPTS = 1

# The claim op replaces this event's ``aggregate_id`` and ``item`` inside the script.
_PLACEHOLDER = QueueItemSnapshot(queue_id="", status="in_progress", priority=5, origin_at=0, created_at=0)


def queue_claim(
    unit: Unit, *, ready: str, deferred: str, item_prefix: str, due: str, now_ms: int, abandon_after_ms: int,
    event_type: str, template: bytes, claimer: str,
) -> Unit:
    """Claim the first ready item of a work queue in one ``qclaim`` op (``lua/commit_ops_queues.lua`` beside this
    module); when one was, the outcome's ids are the ``queue_item.started`` log id, then the item id."""
    return unit.op("qclaim", ready, deferred, now_ms, item_prefix, due, abandon_after_ms, keys.log(unit.p),
                   event_type, template, claimer)


def claim_unit(*, p: int, queue: QueueState, claimer: str, now_ms: int) -> Unit:
    """Claim the queue's next ready item for ``claimer``; see :func:`claimed_id` for the outcome."""
    template = QueueItemStarted(tenant_id=queue.tenant_id, aggregate_id="", ts=now_ms, item=_PLACEHOLDER)
    unit = Unit(p).require(keys.queue(p, queue.id), "deleted", ["0"], QUEUE_GONE_GUARD)
    return queue_claim(
        unit,
        ready=keys.queue_ready(p, queue.id),
        deferred=keys.queue_deferred(p, queue.id),
        item_prefix=keys.queue_item(p, ""),
        due=keys.queue_due(p),
        now_ms=now_ms,
        abandon_after_ms=queue.abandon_after_ms,
        event_type=type_of(template),
        template=msgspec.msgpack.encode(template),
        claimer=claimer,
    )


def claimed_id(outcome: Outcome) -> str | None:
    """The item a :func:`claim_unit` claimed (None when nothing was ready or the unit was refused)."""
    if isinstance(outcome, Applied) and len(outcome.raw_ids) >= 2:
        return text(outcome.raw_ids[-1])
    return None


async def next_ready(redis: Redis, p: int, queue_id: str, now_ms: int, count: int = 1) -> list[str]:
    """The ids of the next ``count`` items in claim order (ready ones and deferred ones due by ``now_ms``)."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zrange(keys.queue_ready(p, queue_id), 0, count - 1)
        pipe.zrangebyscore(keys.queue_deferred(p, queue_id), "-inf", now_ms, start=0, num=count)
        ready, due = await pipe.execute()
    ranks = sorted({text(r) for r in (*ready, *due)})[:count]
    return [r.rsplit(":", 1)[1] for r in ranks]


def claim_item(
    unit: Unit, *, item: ItemState, queue: QueueState, claimer: str, now_ms: int, execution_id: str | None = None
) -> Unit:
    """Add to ``unit`` the claim of ``item`` (which must still be ``new``) for ``claimer`` / ``execution_id``."""
    p = unit.p
    item_key = keys.queue_item(p, item.id)
    snapshot = msgspec.structs.replace(
        item.snapshot, status=IN_PROGRESS, started_at=now_ms, processed_by=claimer, execution_id=execution_id
    )
    unit.require(item_key, "status", ["new"], ITEM_STATUS_GUARD)
    unit.zrem(keys.queue_ready(p, item.queue_id), item.rank)
    unit.zrem(keys.queue_deferred(p, item.queue_id), item.rank)
    unit.hset(item_key, {"status": IN_PROGRESS, "started_at": now_ms, "snap": encode_snapshot(snapshot)})
    unit.zadd(keys.queue_due(p), now_ms + queue.abandon_after_ms, item.id)
    unit.event(QueueItemStarted(tenant_id=item.tenant_id, aggregate_id=item.id, ts=now_ms, item=snapshot))
    return unit


def link_run(unit: Unit, *, trigger_id: str, item_id: str, execution_id: str) -> Unit:
    """Record execution → item in ``trigger_runs`` and count the run in its trigger's ``inflight``: when the run
    ends, the trigger service settles the item and frees the slot (``services/trigger/queue_items.py``)."""
    p = unit.p
    unit.hincrby(keys.trigger(p, trigger_id), "inflight", 1)
    return unit.hset(keys.trigger_runs(p), {execution_id: f"{trigger_id} {item_id}"})


def rerun_item(
    unit: Unit, *, item: ItemState, queue: QueueState, execution_id: str, now_ms: int, data_json: bytes
) -> Unit:
    """Add to ``unit`` (a plain or DLQ retry of ``execution_id``, the run that processed ``item`` and whose end
    the item already followed) the item's new processing: ``in_progress`` again with that run, linked to it so
    that it follows the run's next end. ``data_json`` is the item's data (it left Redis when the item ended).

    The item keeps its ``retry_id``: an item the queue retried already is not retried a second time
    (:func:`will_retry`). Only a ``queue_item`` trigger's run is linked (``processed_by`` ``trigger:<id>``).
    """
    p = unit.p
    item_key = keys.queue_item(p, item.id)
    trigger_id = (item.snapshot.processed_by or "").removeprefix(TRIGGER_CLAIMER)
    snapshot = msgspec.structs.replace(item.snapshot, status=IN_PROGRESS, started_at=now_ms, finished_at=None,
                                       processing_ms=None, error=None, progress=None)
    unit.require(item_key, "status", [item.status], ITEM_STATUS_GUARD)
    unit.require(keys.trigger_runs(p), execution_id, [""], RUN_LINKED_GUARD)
    unit.hset(item_key, {"status": IN_PROGRESS, "started_at": now_ms, "snap": encode_snapshot(snapshot),
                         "data": data_json})
    unit.zadd(keys.queue_due(p), now_ms + queue.abandon_after_ms, item.id)
    unit.event(QueueItemStarted(tenant_id=item.tenant_id, aggregate_id=item.id, ts=now_ms, item=snapshot))
    return link_run(unit, trigger_id=trigger_id, item_id=item.id, execution_id=execution_id)


def rerunnable(item: ItemState | None, execution_id: str) -> bool:
    """``item`` ended with ``execution_id``, a ``queue_item`` trigger's run: a retry of that run takes it back."""
    return (item is not None and item.status != IN_PROGRESS and item.snapshot.execution_id == execution_id
            and (item.snapshot.processed_by or "").startswith(TRIGGER_CLAIMER))


def _in_progress(unit: Unit, item: ItemState) -> Unit:
    """Guards: the item is still in the very claim the caller saw (a retry is another item, so this is exact)."""
    item_key = keys.queue_item(unit.p, item.id)
    unit.require(item_key, "status", [IN_PROGRESS], ITEM_STATUS_GUARD)
    return unit.require(item_key, "started_at", [str(item.snapshot.started_at)], ITEM_STATUS_GUARD)


@dataclass(frozen=True, slots=True)
class Change:
    """A unit, and the item's state once it is applied (what a reply shows without reading it back)."""

    unit: Unit
    item: QueueItemSnapshot


def noted(*, p: int, item: ItemState, note: str, now_ms: int) -> Change:
    """A progress note on an item in progress (its status does not change)."""
    snapshot = msgspec.structs.replace(item.snapshot, progress=note)
    unit = _in_progress(Unit(p), item)
    unit.event(QueueItemProgressed(tenant_id=item.tenant_id, aggregate_id=item.id, ts=now_ms, item=snapshot))
    unit.hset(keys.queue_item(p, item.id), {"snap": encode_snapshot(snapshot)})
    return Change(unit, snapshot)


def _finish(unit: Unit, item: ItemState, snapshot: QueueItemSnapshot) -> None:
    """The item's Redis state once it is finished: no data (SQL has it), out of the abandonment set."""
    p = unit.p
    unit.hset(keys.queue_item(p, item.id), {"status": snapshot.status, "snap": encode_snapshot(snapshot)})
    unit.hdel(keys.queue_item(p, item.id), "data", "started_at")
    unit.zrem(keys.queue_due(p), item.id)


def completed(*, p: int, item: ItemState, result: Any, now_ms: int) -> Change:
    """The item was processed successfully."""
    snapshot = _ended(item, "completed", now_ms)
    unit = _in_progress(Unit(p), item)
    unit.event(
        QueueItemCompleted(tenant_id=item.tenant_id, aggregate_id=item.id, ts=now_ms, item=snapshot, result=result)
    )
    _finish(unit, item, snapshot)
    return Change(unit, snapshot)


def failed(
    *,
    p: int,
    item: ItemState,
    queue: QueueState,
    kind: Literal["business", "application"],
    message: str,
    now_ms: int,
    retry_id: str | None = None,
) -> Change:
    """A business failure is final; an application failure with retries left marks the item ``retried``
    and adds its retry (``retry_id``, a new id unless given), with the same data and reference."""
    error = QueueItemError(message=message, kind=kind)
    snapshot = msgspec.structs.replace(_ended(item, "failed", now_ms), error=error)
    unit = _in_progress(Unit(p), item)
    unit.event(QueueItemFailed(tenant_id=item.tenant_id, aggregate_id=item.id, ts=now_ms, item=snapshot))
    if kind == "application" and will_retry(item, queue):
        snapshot = _retry(unit, item, snapshot, "failed", retry_id or new_id(), now_ms)
    else:
        _finish(unit, item, snapshot)
    return Change(unit, snapshot)


def progress_unit(*, p: int, item: ItemState, progress: str, now_ms: int) -> Unit:
    """:func:`noted`'s unit."""
    return noted(p=p, item=item, note=progress, now_ms=now_ms).unit


def complete_unit(*, p: int, item: ItemState, result: Any, now_ms: int) -> Unit:
    """:func:`completed`'s unit."""
    return completed(p=p, item=item, result=result, now_ms=now_ms).unit


def fail_unit(
    *,
    p: int,
    item: ItemState,
    queue: QueueState,
    kind: Literal["business", "application"],
    message: str,
    now_ms: int,
    retry_id: str | None = None,
) -> Unit:
    """:func:`failed`'s unit."""
    return failed(p=p, item=item, queue=queue, kind=kind, message=message, now_ms=now_ms, retry_id=retry_id).unit


def abandon_unit(*, p: int, item: ItemState, queue: QueueState, now_ms: int, retry_id: str | None = None) -> Unit:
    """In progress past its time: ``abandoned``, and retried like an application failure if retries are left."""
    snapshot = msgspec.structs.replace(item.snapshot, status="abandoned", finished_at=now_ms)
    unit = _in_progress(Unit(p), item)
    unit.event(QueueItemAbandoned(tenant_id=item.tenant_id, aggregate_id=item.id, ts=now_ms, item=snapshot))
    if not queue.deleted and will_retry(item, queue):
        _retry(unit, item, snapshot, "abandoned", retry_id or new_id(), now_ms)
    else:
        _finish(unit, item, snapshot)
    return unit


def will_retry(item: ItemState, queue: QueueState) -> bool:
    """Retries are left, and the item has no retry yet (one taken back by a run's retry may have one)."""
    return item.snapshot.retry_id is None and item.snapshot.retry_count < queue.max_retries


def _ended(item: ItemState, status: Literal["completed", "failed"], now_ms: int) -> QueueItemSnapshot:
    started = item.snapshot.started_at
    return msgspec.structs.replace(
        item.snapshot, status=status, finished_at=now_ms, processing_ms=None if started is None else now_ms - started
    )


def _retry(
    unit: Unit,
    item: ItemState,
    ended: QueueItemSnapshot,
    reason: Literal["failed", "abandoned"],
    retry_id: str,
    now_ms: int,
) -> QueueItemSnapshot:
    """``queue_item.retried`` on the old item, and its retry: a new item, same data, reference and priority."""
    retried = msgspec.structs.replace(ended, status="retried", retry_id=retry_id)
    unit.event(
        QueueItemRetried(tenant_id=item.tenant_id, aggregate_id=item.id, ts=now_ms, item=retried, reason=reason)
    )
    _finish(unit, item, retried)
    old = item.snapshot
    retry = QueueItemSnapshot(
        queue_id=old.queue_id,
        status="new",
        priority=old.priority,
        reference=old.reference,
        deadline=old.deadline,
        retry_count=old.retry_count + 1,
        retry_of=item.id,
        origin_at=old.origin_at,
        created_at=now_ms,
    )
    row = added(tenant_id=item.tenant_id, item_id=retry_id, snapshot=retry, data=item.data(), now_ms=now_ms,
                data_json=item.data_json)
    put_items(unit, tenant_id=item.tenant_id, queue_id=old.queue_id, items=[row], now_ms=now_ms)
    return retried


async def abandon_due(redis: Redis, committer: Committer, p: int, now_ms: int, limit: int = ABANDON_BATCH) -> int:
    """Abandon (and retry, where retries are left) items of partition ``p`` in progress past their time."""
    raw = await redis.zrangebyscore(keys.queue_due(p), "-inf", now_ms, start=0, num=limit)
    due = [text(i) for i in cast(list[bytes], raw)]
    if not due:
        return 0
    units: list[Unit] = []
    queues: dict[str, QueueState | None] = {}
    for item_id in due:
        item = await read_item(redis, p, item_id)
        if item is None or item.status != IN_PROGRESS:  # finished meanwhile: its unit took it out already
            await redis.zrem(keys.queue_due(p), item_id)
            continue
        if item.queue_id not in queues:
            queues[item.queue_id] = await read_queue(redis, p, item.queue_id)
        queue = queues[item.queue_id]
        if queue is None:  # cannot happen while queue hashes are kept; never rescan it forever
            await redis.zrem(keys.queue_due(p), item_id)
            continue
        units.append(abandon_unit(p=p, item=item, queue=queue, now_ms=now_ms))
    outcomes = await committer.commit_all(units)
    abandoned = sum(isinstance(o, Applied) for o in outcomes)
    if abandoned:
        log.info("abandoned %d queue items in partition %d", abandoned, p)
    return abandoned


async def abandon_everywhere(redis: Redis, committer: Committer, partitions: int, now_ms: int) -> int:
    """:func:`abandon_due` on every partition, until none has items past their time."""
    total = 0
    for p in range(partitions):
        while (n := await abandon_due(redis, committer, p, now_ms)) >= ABANDON_BATCH:
            total += n
        total += n
    return total

