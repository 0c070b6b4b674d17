"""The trigger service's periodic sweep of work queues: items in progress past their time become ``abandoned``.

Every ``ORQ_QUEUE_SWEEP_SECONDS`` (default 30), on every partition, items whose claim is older than their
queue's ``abandon_after_minutes`` are abandoned, and retried where their queue allows
(:func:`shared.domain.queues.claims.abandon_due`). The API also does this lazily before each claim on a partition;
the sweep covers queues nobody claims from, so their items do not stay ``in_progress`` forever. Any number
of trigger services may sweep at once: each abandonment is a unit guarded on the claim it ends, so it
happens once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import suppress

from redis.asyncio import Redis

from shared.domain.queues.claims import abandon_everywhere
from shared.infra.clock import now_ms
from shared.infra.settings import Settings
from shared.log.commit import Committer


async def sweep_abandoned(
    redis: Redis, committer: Committer, settings: Settings, stop: asyncio.Event, clock: Callable[[], int] = now_ms
) -> None:
    """Sweep every partition each ``settings.queue_sweep_s`` seconds until ``stop`` is set."""
    while not stop.is_set():
        await abandon_everywhere(redis, committer, settings.partitions, clock())  # it logs what it abandons
        with suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), settings.queue_sweep_s)
