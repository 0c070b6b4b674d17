"""``orq trigger``: the trigger service. Any number of instances may run; each firing happens once.

Parts, all on one Redis client and one group committer:

- the log consumer (group ``trigger``, :mod:`services.trigger.log_reactions`): workflow chaining and queue items;
- the scheduler (:mod:`services.trigger.schedule`): cron ticks;
- the file watcher (:mod:`services.trigger.file_watcher`);
- the SMTP listener (:mod:`services.trigger.email`);
- a periodic feed of ``queue_item`` triggers (deferred items coming due, slots freed while events were missed).

Each part is restarted after a pause if it fails; ``stop`` drains them all (the consumer finishes the batch in
hand and acks it, the committer flushes).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from contextlib import suppress

from services.trigger.abandon import sweep_abandoned
from services.trigger.email import serve_smtp
from services.trigger.file_watcher import FileWatcher
from services.trigger.log_reactions import LogReactions
from services.trigger.queue_items import QueueItemTriggers
from services.trigger.schedule import Scheduler
from shared.domain.triggers.firing import Firer
from shared.infra.settings import Settings
from shared.log import keys
from shared.log.consumer import StreamConsumer
from shared.service.bootstrap import Service

log = logging.getLogger(__name__)

RESTART_PAUSE_S = 1.0
FEED_EVERY_S = 2.0


def consumer_name() -> str:
    """Unique per process: instances must not share a consumer (each drains its own pending entries)."""
    return f"trigger-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


async def _supervised(name: str, part: Callable[[], Awaitable[None]], stop: asyncio.Event) -> None:
    """Run ``part`` until ``stop``; if it fails, log and start it again after a pause."""
    while not stop.is_set():
        try:
            await part()
        except Exception:  # a loop's top level
            log.exception("trigger service part %s failed; restarting it", name)
        with suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), RESTART_PAUSE_S)


async def _every(seconds: float, action: Callable[[], Awaitable[object]], stop: asyncio.Event) -> None:
    while not stop.is_set():
        await action()
        with suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)


async def serve(settings: Settings, stop: asyncio.Event, consumer: str | None = None) -> None:
    """Run every part of the trigger service until ``stop`` is set."""
    try:
        async with Service(settings, stop) as service:
            redis, committer = service.redis, service.committer
            await service.serve_metrics()
            firer = Firer(redis, committer, settings)
            queue_items = QueueItemTriggers(redis, firer, settings)
            reactions = LogReactions(redis, firer, queue_items, settings)
            log_consumer = StreamConsumer(
                redis,
                group=keys.GROUP_TRIGGER,
                consumer=consumer or consumer_name(),
                streams=[keys.log(p) for p in range(settings.partitions)],
                handler=reactions.handle,
            )
            parts: dict[str, Callable[[], Awaitable[None]]] = {
                "consumer": lambda: log_consumer.run(stop),
                "scheduler": lambda: Scheduler(redis, firer, settings).run(stop),
                "files": lambda: FileWatcher(redis, firer, settings).run(stop),
                "smtp": lambda: serve_smtp(redis, firer, settings, stop),
                "queue feed": lambda: _every(FEED_EVERY_S, queue_items.feed_all, stop),
                "queue abandon": lambda: sweep_abandoned(redis, committer, settings, stop),
            }
            await asyncio.gather(*(_supervised(name, part, stop) for name, part in parts.items()))
    finally:
        log.info("trigger service stopped")
