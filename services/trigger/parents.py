"""Sub-workflows seen from the log (shared/domain/executions/subworkflows.py): a child's end reaches the parent
waiting for it, and a cancelled parent's waited-for child is cancelled too.

Both are guarded commits on Redis state, so a redelivered event (a crash before the ack) changes nothing the
second time: the parent no longer waits for that child, the child is already cancelled.
"""

from __future__ import annotations

import logging
from typing import Any

from redis.asyncio import Redis

from shared.domain.executions import subworkflows
from shared.domain.executions.commands import cancel_unit
from shared.domain.executions.pinned import PinnedDefinitions
from shared.domain.executions.state import read_execution
from shared.infra.clock import now_ms
from shared.infra.optimistic import MOVED, Moved, optimistically
from shared.log.commit import Applied, Committer
from shared.service import metrics

log = logging.getLogger(__name__)


class Parents:
    def __init__(self, redis: Redis, committer: Committer) -> None:
        self.redis = redis
        self.committer = committer
        self.definitions = PinnedDefinitions()

    async def execution_ended(self, p: int, execution_id: str, status: str, result: Any, error: str) -> None:
        await self._tell_parent(p, execution_id, status, result, error)
        if status == "cancelled":
            await self._cancel_child(p, execution_id)

    async def _tell_parent(self, p: int, child_id: str, status: str, result: Any, error: str) -> None:
        async def attempt() -> None | Moved:
            unit = await subworkflows.parent_outcome_unit(self.redis, self.definitions, p=p, child_id=child_id,
                                                          status=status, result=result, error=error,
                                                          now_ms=now_ms())
            if unit is None:
                return None
            if isinstance(await self.committer.commit(unit), Applied):
                metrics.observe(unit)  # the parent may complete, retry or dead-letter here
                return None
            return MOVED

        await optimistically(attempt, exhausted=_given_up)

    async def _cancel_child(self, p: int, parent_id: str) -> None:
        async def attempt() -> None | Moved:
            found = await subworkflows.child_to_cancel(self.redis, p, parent_id)
            if found is None:
                return None
            child_id, observed = found
            child = await read_execution(self.redis, p, child_id, fields=("tenant",))
            unit = cancel_unit(p=p, tenant_id=child.tenant if child else "", execution_id=child_id,
                               observed=observed, now_ms=now_ms())
            if isinstance(await self.committer.commit(unit), Applied):
                metrics.observe(unit)
                log.info("cancelled child %s of cancelled execution %s", child_id, parent_id,
                         extra={"execution_id": child_id})
                return None
            return MOVED

        await optimistically(attempt, exhausted=_given_up)


async def _given_up() -> None:
    """The state kept moving under every attempt: leave it quietly (the event is acked all the same)."""
