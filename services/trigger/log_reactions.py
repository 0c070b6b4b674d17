"""Triggers that react to events of the log (group ``trigger``): workflow chaining and queue items.

- An execution ended (``execution.completed``, ``execution.failed``, ``execution.cancelled``, or a poison
  ``execution.dead_lettered`` that no ``execution.failed`` preceded): every ``workflow_completed`` trigger
  watching its workflow, whose ``statuses`` include the outcome, starts its own workflow with the run's
  result as params and ``parent_execution_id`` set. The firing claims ``event:<stream id>``, so a redelivered
  event (a crash before the ack, a takeover) never fires twice.
- An execution of a queue item ended: the item follows (see :mod:`services.trigger.queue_items`).
- A child execution ended: the parent waiting for it goes on; a cancelled parent's child is cancelled (see
  :mod:`services.trigger.parents`).
- ``queue_item.added``: the queue's triggers are fed.

Consumer groups split the log among trigger instances; the claims make any overlap harmless.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
from redis.asyncio import Redis

from services.trigger.parents import Parents
from services.trigger.queue_items import QueueItemTriggers
from shared.domain.executions.state import read_execution
from shared.domain.triggers.definitions import chain_edges, read_trigger
from shared.domain.triggers.firing import Fired, Firer, Once, Request
from shared.infra.clock import now_ms
from shared.infra.settings import Settings
from shared.log import keys
from shared.log.consumer import Record
from shared.log.events import (
    Event,
    ExecutionCancelled,
    ExecutionCompleted,
    ExecutionFailed,
    QueueItemAdded,
)
from shared.service import metrics

log = logging.getLogger(__name__)

EVENT_CLAIM_TTL_S = 7 * 24 * 3600
_INTERESTING = frozenset({"execution.completed", "execution.failed", "execution.cancelled",
                          "execution.dead_lettered", "queue_item.added"})


def outcome_of(event: Event) -> tuple[str, Any, str] | None:
    """(status, result, error) of an event that ends an execution, else None."""
    match event:
        case ExecutionCompleted():
            return "completed", event.result, ""
        case ExecutionFailed():
            return "failed", None, event.error
        case ExecutionCancelled():
            return "cancelled", None, event.reason
        case _:  # execution.dead_lettered follows the execution.failed that ended the run: not a second end
            return None


def chained_params(status: str, result: Any, error: str) -> dict[str, Any]:
    """What a chained run gets: the finished run's result (an object as is, anything else under ``result``)."""
    if status != "completed":
        return {"error": error} if error else {}
    if isinstance(result, dict):
        return result
    return {} if result is None else {"result": result}


class LogReactions:
    """The handler of the trigger service's log consumer."""

    def __init__(self, redis: Redis, firer: Firer, queue_items: QueueItemTriggers, settings: Settings,
                 clock: Callable[[], int] = now_ms) -> None:
        self.redis = redis
        self.firer = firer
        self.queue_items = queue_items
        self.parents = Parents(redis, firer.committer)
        self.clock = clock
        self._partition_of = {keys.log(p): p for p in range(settings.partitions)}

    async def handle(self, stream: str, records: Sequence[Record]) -> None:
        p = self._partition_of[stream]
        for record in records:
            if record.type not in _INTERESTING:
                continue
            try:
                event = record.event()
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:  # never retry an entry that cannot be read
                log.error("undecodable %s entry %s on %s: %s", record.type, record.id, stream, exc)
                continue
            if isinstance(event, QueueItemAdded):
                await self.queue_items.feed_queue(p, event.item.queue_id)
                continue
            ended = outcome_of(event)
            if ended is not None:
                await self.parents.execution_ended(p, event.aggregate_id, *ended)
                await self.queue_items.finish(p, event.aggregate_id, *ended)
                await self.chain(p, record.id, event.aggregate_id, *ended)

    async def chain(self, p: int, event_id: str, execution_id: str, status: str, result: Any, error: str) -> int:
        """Fire the ``workflow_completed`` triggers watching the ended execution's workflow."""
        ended = await read_execution(self.redis, p, execution_id, fields=("tenant", "workflow_id"))
        if ended is None or not ended.tenant:
            return 0
        tenant_id, workflow_id = ended.tenant, ended.workflow_id
        _, edges = await chain_edges(self.redis, p, tenant_id)
        fired = 0
        for trigger_id, (source, _) in sorted(edges.items()):
            if source != workflow_id:
                continue
            trigger = await read_trigger(self.redis, p, trigger_id)
            if trigger is None or not trigger.live or status not in trigger.config.get("statuses", ["completed"]):
                continue
            request = Request(
                params=chained_params(status, result, error),
                source={"execution_id": execution_id, "workflow_id": workflow_id, "status": status},
                claims=[Once(keys.trigger_claim(p, trigger_id, f"event:{event_id}"), EVENT_CLAIM_TTL_S)],
                parent_execution_id=execution_id,
            )
            outcome = await self.firer.fire(p, trigger_id, request, self.clock())
            if isinstance(outcome, Fired):
                metrics.trigger_fired(outcome.trigger.type)
                fired += 1
                log.info("chain trigger %s started %s after %s %s", trigger_id, outcome.execution_id, execution_id,
                         status, extra={"trigger_id": trigger_id, "execution_id": outcome.execution_id})
        return fired
