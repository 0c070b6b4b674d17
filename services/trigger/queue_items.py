"""``queue_item`` triggers: one execution per item of a work queue, at most ``max_concurrent`` at a time.

Filling a trigger's free slots: take the queue's next ready items (:func:`shared.domain.queues.claims.next_ready`)
and fire one execution per item. Each firing unit also claims the item (``new`` → ``in_progress``, with the
execution's id: :func:`shared.domain.queues.claims.claim_item`), counts the slot in the trigger's ``inflight`` field
(guarded by ``max_concurrent``) and records execution → item in ``orq:{p}:trigger_runs``: item, slot and
execution go together or not at all.

When the execution ends, the item follows its outcome (:meth:`QueueItemTriggers.finish`): completed → ``completed``
with the run's result; failed → ``failed`` as an application error (retried while the queue allows);
cancelled → ``failed`` as a business error (a person stopped it: not retried). The slot is freed in the
same unit, and the trigger is fed again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from services.trigger.registry import config_of, live_triggers
from shared.domain.executions.commands import leave_dlq
from shared.domain.executions.state import read_execution
from shared.domain.queues.claims import (
    IN_PROGRESS,
    QUEUE_RUN_ATTEMPTS,
    TRIGGER_CLAIMER,
    claim_item,
    complete_unit,
    fail_unit,
    link_run,
    next_ready,
)
from shared.domain.queues.definitions import QueueState, read_queue
from shared.domain.queues.items import ItemState, read_items
from shared.domain.triggers.definitions import QueueItemConfig, TriggerState, read_trigger
from shared.domain.triggers.firing import Fired, Firer, Request, Skipped
from shared.infra.clock import new_id, now_ms
from shared.infra.lru import LRU
from shared.infra.optimistic import MOVED, Moved, optimistically
from shared.infra.settings import Settings
from shared.log import keys
from shared.log.commit import Applied, Refused, Unit
from shared.log.redis import text
from shared.service import metrics

log = logging.getLogger(__name__)

SLOTS_GUARD = "max_concurrent"
RUN_GUARD = "run_finished"
RUN_CHANGED_GUARD = "run_changed"
QUOTA_PAUSE_MS = 60_000
# Queue triggers remembered as paused (over quota or backlog) at once. An entry is a trigger id and a time
# (~150 bytes), so at most ~1.5 MB; forgetting a pause early only costs one more firing attempt, refused again.
MAX_PAUSED = 10_000


@dataclass(frozen=True, slots=True)
class ItemClaim:
    """The claim of one queue item by a firing, with its concurrency slot and its execution → item record."""

    trigger: TriggerState
    item: ItemState
    queue: QueueState
    execution_id: str
    max_concurrent: int
    now: int

    def add(self, unit: Unit) -> None:
        p = unit.p
        trigger_key = keys.trigger(p, self.trigger.id)
        unit.within_hash_limit(trigger_key, "inflight", 1, self.max_concurrent, SLOTS_GUARD)
        claim_item(unit, item=self.item, queue=self.queue, claimer=f"{TRIGGER_CLAIMER}{self.trigger.id}",
                   now_ms=self.now, execution_id=self.execution_id)
        link_run(unit, trigger_id=self.trigger.id, item_id=self.item.id, execution_id=self.execution_id)


class QueueItemTriggers:
    """Starts executions for queue items and settles items when their executions end."""

    def __init__(self, redis: Redis, firer: Firer, settings: Settings, clock: Callable[[], int] = now_ms,
                 max_paused: int = MAX_PAUSED) -> None:
        self.redis = redis
        self.firer = firer
        self.settings = settings
        self.clock = clock
        # trigger id → until when it is not fed; entries go when their time passes (see feed_all).
        self._paused_until: LRU[str, int] = LRU(max_paused)

    @property
    def paused(self) -> int:
        """How many triggers are remembered as paused."""
        return len(self._paused_until)

    async def feed_all(self) -> int:
        """Fill every queue_item trigger's free slots (periodic: deferred items become due, missed events)."""
        now = self.clock()
        self._paused_until.keep(lambda _, until: until > now)  # also the pauses of triggers deleted since
        started = 0
        for trigger in await live_triggers(self.redis, self.settings.partitions, "queue_item"):
            started += await self.feed(trigger)
        return started

    async def feed_queue(self, p: int, queue_id: str) -> int:
        """An item was added to ``queue_id``: feed the triggers of that queue."""
        started = 0
        for trigger in await live_triggers(self.redis, self.settings.partitions, "queue_item"):
            if trigger.partition == p and trigger.config.get("queue_id") == queue_id:
                started += await self.feed(trigger)
        return started

    async def feed(self, trigger: TriggerState) -> int:
        config = config_of(trigger, QueueItemConfig)
        now = self.clock()
        if config is None or (self._paused_until.get(trigger.id) or 0) > now:
            return 0
        p = trigger.partition
        inflight = int(text(await self.redis.hget(keys.trigger(p, trigger.id), "inflight")) or 0)
        free = config.max_concurrent - inflight
        queue = await read_queue(self.redis, p, config.queue_id)
        if free <= 0 or queue is None or queue.deleted:
            return 0
        started = 0
        items = await read_items(self.redis, p, await next_ready(self.redis, p, config.queue_id, now, free))
        for item in items:
            if item is None or item.status != "new":
                continue
            execution_id = new_id()
            claim = ItemClaim(trigger, item, queue, execution_id, config.max_concurrent, now)
            request = Request(params=item.data(), source={"queue_id": config.queue_id, "item_id": item.id},
                              claims=[claim], consume_on_skip=False, execution_id=execution_id,
                              max_attempts=QUEUE_RUN_ATTEMPTS)
            outcome = await self.firer.fire(p, trigger.id, request, now)
            if isinstance(outcome, Fired):
                metrics.trigger_fired(outcome.trigger.type)
                started += 1
            elif isinstance(outcome, Skipped):
                # Over quota or backlog: the item stays new; look again in a while rather than every poll.
                self._paused_until.put(trigger.id, now + QUOTA_PAUSE_MS)
                break
            elif outcome.reason in (SLOTS_GUARD, "gone"):
                break
        return started

    async def finish(self, p: int, execution_id: str, status: str, result: Any, error: str) -> bool:
        """The execution of a queue item ended: settle the item, free the slot, feed the trigger again.

        The queue owns the retry of an item's failed run: the run the executor dead-lettered leaves the DLQ in
        the same unit (``execution.dlq_purged``), so nobody retries it beside the queue's new item. A run
        requeued meanwhile (a DLQ retry before this) is running again: its item waits for that run's end.
        """
        settled = await optimistically(lambda: self._settle(p, execution_id, status, result, error),
                                       exhausted=_unsettled)
        if settled is None:
            return False
        trigger = settled.trigger
        if trigger is not None and trigger.live:
            await self.feed(trigger)
        return True

    async def _settle(self, p: int, execution_id: str, status: str, result: Any,
                      error: str) -> Settled | None | Moved:
        """One round of :meth:`finish`: None when there is nothing (more) for this run to settle."""
        record = text(await self.redis.hget(keys.trigger_runs(p), execution_id))
        if not record:
            return None
        trigger_id, _, item_id = record.partition(" ")
        run = await read_execution(self.redis, p, execution_id, fields=("status", "dead_lettered", "tenant"))
        if run is not None and run.status is not None and run.status != status:
            return None  # requeued (retried) since: the item stays in progress with this run
        now = self.clock()
        items = await read_items(self.redis, p, [item_id])
        item = items[0]
        trigger = await read_trigger(self.redis, p, trigger_id)
        unit = Unit(p)
        if item is not None and item.status == IN_PROGRESS and item.snapshot.execution_id == execution_id:
            queue = await read_queue(self.redis, p, item.queue_id)
            if status == "completed":
                unit = complete_unit(p=p, item=item, result=result, now_ms=now)
            elif queue is not None:
                message = error or f"execution {execution_id} {status}"
                unit = fail_unit(p=p, item=item, queue=queue, message=message, now_ms=now,
                                 kind="business" if status == "cancelled" else "application")
                if run is not None and run.dead_lettered:  # still failed and still there, or the unit is refused
                    leave_dlq(unit, run, now_ms=now, label=RUN_CHANGED_GUARD)
        _free_slot(unit, p, trigger_id, execution_id, record)
        outcome = await self.firer.committer.commit(unit)
        if isinstance(outcome, Applied):
            return Settled(trigger)
        if isinstance(outcome, Refused) and outcome.label == RUN_CHANGED_GUARD:
            return MOVED  # the run changed under us (a DLQ retry or purge at the same moment): read again
        # The item moved on (abandoned meanwhile): still free the slot, once.
        release = _free_slot(Unit(p), p, trigger_id, execution_id, record)
        await self.firer.committer.commit(release)
        return Settled(trigger)


@dataclass(frozen=True, slots=True)
class Settled:
    """A queue-item run's end was settled: its trigger (as read then, None if gone) is fed again."""

    trigger: TriggerState | None


async def _unsettled() -> None:
    """The run kept changing under every attempt: leave it to whoever changed it (its item waits)."""
    return None


def _free_slot(unit: Unit, p: int, trigger_id: str, execution_id: str, record: str) -> Unit:
    unit.require(keys.trigger_runs(p), execution_id, [record], RUN_GUARD)
    unit.hdel(keys.trigger_runs(p), execution_id)
    unit.hincrby(keys.trigger(p, trigger_id), "inflight", -1)
    return unit
