"""``orq trigger``: the trigger service's consumer of the event log.

It joins group ``trigger`` on every partition's log so that triggers reacting to events (workflow chaining,
queue items) see each event once across trigger instances. The trigger types themselves are built on
this loop; until a trigger reacts to an event, entries are acknowledged as they are read.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from shared import keys
from shared.consumer import Record, StreamConsumer
from shared.durability import ensure_durable
from shared.metrics_server import start_metrics_server
from shared.redis import connect
from shared.settings import Settings

log = logging.getLogger(__name__)


async def _handle(stream: str, records: Sequence[Record]) -> None:
    log.debug("trigger service saw %d events on %s", len(records), stream)


async def serve(settings: Settings, stop: asyncio.Event, consumer: str = "trigger-1") -> None:
    """Consume the log as group ``trigger`` until ``stop`` is set."""
    redis = connect(settings.redis_url)
    try:
        await ensure_durable(redis, settings)
        await start_metrics_server(settings, stop, redis)
        await StreamConsumer(
            redis,
            group=keys.GROUP_TRIGGER,
            consumer=consumer,
            streams=[keys.log(p) for p in range(settings.partitions)],
            handler=_handle,
        ).run(stop)
    finally:
        await redis.aclose()
