"""Long-polling robots wait here for a task to be offered to their pool (``POST /api/robots/tasks/next``).

One pub/sub connection per API process listens to every partition's ``offered`` channel (the executor
publishes ``<tenant> <pool>`` with each offer) and wakes the waiters of that pool at once. A message can be
missed (a reconnect), so a waiter also looks again at least every ``RECHECK_S``: in Redis, never in SQL.
The connection is opened with the first waiter and kept; the waiters of a pool share one event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from redis.asyncio import Redis

from shared.log import keys
from shared.log.redis import text

log = logging.getLogger(__name__)
RECHECK_S = 1.0
RETRY_S = 1.0


class OfferWaiters:
    def __init__(self, redis: Redis, partitions: int) -> None:
        self.redis = redis
        self.channels = [keys.offers_channel(p) for p in range(partitions)]
        self._events: dict[tuple[str, str], asyncio.Event] = {}
        self._waiting: dict[tuple[str, str], int] = {}
        self._listener: asyncio.Task[None] | None = None
        self.closing = False

    async def wait(self, tenant_id: str, pool: str, timeout: float) -> None:
        """Return when a task may have been offered to the pool, or after ``min(timeout, RECHECK_S)``."""
        if self.closing:
            return
        if self._listener is None or self._listener.done():
            self._listener = asyncio.create_task(self._listen(), name="robot offers")
        pool_key = (tenant_id, pool)
        event = self._events.setdefault(pool_key, asyncio.Event())
        self._waiting[pool_key] = self._waiting.get(pool_key, 0) + 1
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), min(timeout, RECHECK_S))
        finally:
            self._waiting[pool_key] -= 1
            if not self._waiting[pool_key]:  # the last waiter of a pool takes its event away: bounded by waiters
                del self._waiting[pool_key]
                self._events.pop(pool_key, None)

    def _wake(self, message: str) -> None:
        tenant_id, _, pool = message.partition(" ")
        event = self._events.get((tenant_id, pool))
        if event is not None:
            event.set()
            # Everyone waiting now was woken; later waiters wait for the next offer.
            self._events[(tenant_id, pool)] = asyncio.Event()

    async def _listen(self) -> None:
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(*self.channels)
                while True:
                    message = await pubsub.get_message(timeout=5.0)
                    if message is not None:
                        self._wake(text(message["data"]))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # waiters still look again every RECHECK_S meanwhile
                task = asyncio.current_task()
                if task is not None and task.cancelling():  # a cancel surfaced as a connection error
                    raise
                log.warning("robot offer notices interrupted (%s); subscribing again", exc)
                await asyncio.sleep(RETRY_S)
            finally:
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    def shut(self) -> None:
        """The API is stopping: wake every waiter now, so open long polls answer 204 (and their robots poll
        another instance) instead of being cut off when the server's grace period ends."""
        self.closing = True
        for event in self._events.values():
            event.set()

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._listener
