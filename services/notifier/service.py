"""``orq notifier``: tells customers when executions end (webhooks, email), and runs the scheduled maintenance.

Loops:

1. **log**: group ``notifier`` on every partition's log (the one consumer loop, ``StreamConsumer``). An
   ``execution.completed|failed|dead_lettered`` whose pinned workflow has matching ``notify`` entries
   queues one notification each (event + hash + delivery entry, one unit; redelivery queues nothing new).
2. **deliveries**: group ``notifier`` on ``orq:{p}:notify``; each entry is one attempt, bounded by
   ``DELIVERY_SLOTS`` at a time. Its outcome (``notification.sent`` / ``notification.failed``) and what
   follows (ack, or a wait on the ``backoff`` pseudo-consumer) are one unit.
3. **reclaim**: entries on ``backoff`` whose delay has passed, and entries of a notifier that died
   mid-attempt (idle past the lease), are claimed and attempted again.
4. **maintenance**: every ``ORQ_MAINTENANCE_INTERVAL_S``, the instance that takes the lock runs
   :func:`shared.service.maintenance.run_maintenance` (once per interval across every notifier).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from collections.abc import AsyncIterator, Sequence
from contextlib import suppress
from typing import Any, cast

import httpx
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from services.notifier.delivery import Attempt, Deliverer
from shared.domain.executions.pinned import PINNED_CACHE_SIZE, PinnedDefinitions
from shared.domain.executions.state import read_execution
from shared.domain.notifications import TRIGGERS, backoff_ms, outcome_unit, queue_units
from shared.infra.clock import now_ms
from shared.infra.settings import Settings
from shared.log import keys
from shared.log.commit import Applied, Committer
from shared.log.consumer import Record, StreamConsumer
from shared.log.redis import Entries, ensure_groups, text
from shared.log.stream_reads import StreamReads
from shared.log.workflows import WorkflowDef
from shared.service.bootstrap import Service
from shared.service.maintenance import run_maintenance
from shared.service.metrics import Metric

log = logging.getLogger(__name__)

DELIVERY_SLOTS = 16
RECLAIM_EVERY_S = 0.25
PENDING_PAGE = 200
# Short blocking reads: the loops notice stop within this (the socket timeout is far longer).
READ_BLOCK_MS = 500
MAINTENANCE_CHECK_S = 30.0
SHUTDOWN_GRACE_S = 15.0


class Notifier:
    """Queues and delivers notifications as consumer ``name`` of group ``notifier``."""

    def __init__(self, settings: Settings, redis: Redis, committer: Committer, deliverer: Deliverer,
                 engine: AsyncEngine | None = None, name: str | None = None,
                 definition_cache: int = PINNED_CACHE_SIZE) -> None:
        self.settings = settings
        self.redis = redis
        self.committer = committer
        self.deliverer = deliverer
        self.engine = engine
        self.name = name or f"notifier-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.partitions = list(range(settings.partitions))
        self.lease_ms = max(60_000, int(settings.webhook_timeout_s * 3000))
        self._partition_of = {keys.log(p): p for p in self.partitions} | {keys.notify(p): p for p in self.partitions}
        # Pinned definitions of the workflows whose executions end, least recently used dropped past the bound
        # (a dropped one is read again from Redis).
        self._definitions = PinnedDefinitions(definition_cache)
        self._inflight: set[asyncio.Task[None]] = set()
        self._slot_freed = asyncio.Event()
        self.counts = {"queued": 0, "sent": 0, "failed": 0}

    # --- lifecycle ------------------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Run every loop until ``stop``; then finish the attempts in hand (up to a grace period)."""
        notify_streams = [keys.notify(p) for p in self.partitions]
        await ensure_groups(self.redis, notify_streams, keys.GROUP_NOTIFIER)
        consumer = StreamConsumer(self.redis, group=keys.GROUP_NOTIFIER, consumer=self.name,
                                  streams=[keys.log(p) for p in self.partitions], handler=self.on_log,
                                  block_ms=READ_BLOCK_MS)
        loops = [
            asyncio.create_task(consumer.run(stop), name="notifier-log"),
            asyncio.create_task(self._deliveries(stop), name="notifier-deliveries"),
            asyncio.create_task(self._reclaim_loop(stop), name="notifier-reclaim"),
            asyncio.create_task(self._maintenance_loop(stop), name="notifier-maintenance"),
        ]
        try:
            done, _ = await asyncio.wait([*loops, asyncio.create_task(stop.wait())],
                                         return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task in loops and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            stop.set()
            await asyncio.gather(*loops, return_exceptions=True)
            if self._inflight:
                await asyncio.wait(self._inflight, timeout=SHUTDOWN_GRACE_S)

    # --- 1. the log: queue notifications --------------------------------------------------------------------
    async def on_log(self, stream: str, records: Sequence[Record]) -> None:
        """Handler of group ``notifier`` on a log stream: queue what ended executions ask for."""
        p = self._partition_of[stream]
        units = []
        for record in records:
            if record.type not in TRIGGERS:
                continue
            event = record.event()
            state = await read_execution(self.redis, p, event.aggregate_id, fields=("def_key", "workflow_id"))
            if state is None:
                continue
            definition = await self._definition(state.def_key)
            if definition is None or not definition.notify:
                continue
            units += queue_units(p=p, entry_id=record.id, event=event, workflow_id=state.workflow_id,
                                 def_key=state.def_key, definition=definition, now_ms=now_ms())
        if units:
            outcomes = await self.committer.commit_all(units)
            self.counts["queued"] += sum(isinstance(o, Applied) for o in outcomes)

    async def _definition(self, def_key: str) -> WorkflowDef | None:
        """A pinned definition (immutable: cached within the bound); None without a key or when it is gone."""
        return await self._definitions.read_key(self.redis, def_key) if def_key else None

    # --- 2. deliveries --------------------------------------------------------------------------------------
    async def _deliveries(self, stop: asyncio.Event) -> None:
        streams = {keys.notify(p): ">" for p in self.partitions}
        # On a cluster each partition's read asks for ``free``: a burst may start up to one batch per partition
        # beyond DELIVERY_SLOTS, a bound all the same.
        reads = StreamReads(self.redis, group=keys.GROUP_NOTIFIER, consumer=self.name)
        try:
            await self._deliver_until(stop, streams, reads)
        finally:
            await reads.close()

    async def _deliver_until(self, stop: asyncio.Event, streams: dict[str, str], reads: StreamReads) -> None:
        while not stop.is_set():
            free = DELIVERY_SLOTS - len(self._inflight)
            if free <= 0:
                self._slot_freed.clear()
                with suppress(TimeoutError):
                    await asyncio.wait_for(self._slot_freed.wait(), 1.0)
                continue
            try:
                reply = await reads.read(streams, count=free, block_ms=READ_BLOCK_MS)
            except Exception:
                log.exception("reading notification deliveries failed")
                await asyncio.sleep(1)
                continue
            for stream, entries in reply:
                for entry_id, fields in entries:
                    self._spawn(self._partition_of[stream], entry_id.decode(), text(fields.get(b"n")))

    def _spawn(self, p: int, entry_id: str, notification: str) -> None:
        task = asyncio.create_task(self.attempt(p, entry_id, notification), name=f"notify-{notification}")
        self._inflight.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self._slot_freed.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("notification attempt failed unexpectedly", exc_info=task.exception())

    async def attempt(self, p: int, entry_id: str, notification: str) -> None:
        """Make one delivery attempt of ``notification`` (entry ``entry_id``) and record its outcome."""
        key = keys.notification(p, notification)
        raw = await self.redis.hgetall(key)
        state = {text(k): v for k, v in raw.items()}
        fields = {k: text(v) for k, v in state.items() if k != "payload"}
        if fields.get("entry") != entry_id or fields.get("status") not in {"pending", "retrying"}:
            await self.redis.xack(keys.notify(p), keys.GROUP_NOTIFIER, entry_id)  # stale: nothing to do
            await self.redis.xdel(keys.notify(p), entry_id)
            return
        body = state["payload"] if isinstance(state["payload"], bytes) else str(state["payload"]).encode()
        attempt = int(fields.get("attempt") or 0) + 1
        series = attempt - int(fields.get("series_start") or 1) + 1
        extra = {"notification_id": notification, "execution_id": fields["execution_id"],
                 "tenant_id": fields["tenant"], "attempt": attempt}
        result = await self._send(fields, body, notification, attempt)
        retry_in = None
        if not result.ok and result.retryable and series < self.settings.notify_attempts:
            retry_in = backoff_ms(self.settings.notify_backoff_ms, series)
        unit = outcome_unit(p=p, notification=notification, state=fields, entry_id=entry_id, attempt=attempt,
                            ok=result.ok, status_code=result.status_code, error=result.error,
                            duration_ms=result.duration_ms, retry_in_ms=retry_in, now_ms=now_ms())
        await self.committer.commit(unit)
        if result.ok:
            self.counts["sent"] += 1
            log.info("notification %s delivered to %s", notification, fields["target"], extra=extra)
        else:
            self.counts["failed"] += 1
            log.warning("notification %s attempt %d failed: %s%s", notification, attempt, result.error,
                        "" if retry_in is None else f" (retry in {retry_in} ms)", extra=extra)

    async def _send(self, fields: dict[str, str], body: bytes, notification: str, attempt: int) -> Attempt:
        if fields["channel"] == "email":
            return await self.deliverer.email(fields["target"], body=body)
        secret = None
        definition = await self._definition(fields.get("def_key", ""))
        index = int(fields.get("index") or 0)
        if definition is not None and index < len(definition.notify):
            secret = definition.notify[index].secret
        return await self.deliverer.webhook(fields["target"], body=body, event=f"execution.{fields['trigger']}",
                                            delivery=notification, attempt=attempt, secret=secret,
                                            now_s=now_ms() // 1000)

    # --- 3. reclaim -----------------------------------------------------------------------------------------
    async def _reclaim_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                for p in self.partitions:
                    await self.reclaim(p)
            except Exception:
                log.exception("reclaiming notification deliveries failed")
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), RECLAIM_EVERY_S)

    async def reclaim(self, p: int) -> int:
        """Attempt again the entries of ``p`` whose backoff passed or whose notifier died; returns how many."""
        stream = keys.notify(p)
        taken = 0
        async for entry in self._pending(stream):
            if DELIVERY_SLOTS - len(self._inflight) <= 0:
                break
            entry_id = text(entry["message_id"])
            idle = int(entry["time_since_delivered"])
            owner = text(entry["consumer"])
            if owner == keys.CONSUMER_BACKOFF:
                need = await self._retry_delay(stream, p, entry_id)
            else:
                need = self.lease_ms
            if need is None or idle < need:
                continue
            # XCLAIM with the same min idle: of several notifiers racing for it, one gets it.
            claimed = await self.redis.xclaim(stream, keys.GROUP_NOTIFIER, self.name, need, [entry_id])
            for claimed_id, fields in cast(Entries, claimed):
                if fields:
                    self._spawn(p, text(claimed_id), text(fields.get(b"n")))
                    taken += 1
        return taken

    async def _pending(self, stream: str) -> AsyncIterator[dict[str, Any]]:
        """Every pending entry, a page at a time: entries waiting out a long backoff at the head of the list
        never hide the ones behind them."""
        start = "-"
        while True:
            page: list[dict[str, Any]] = await self.redis.xpending_range(stream, keys.GROUP_NOTIFIER, start, "+",
                                                                         PENDING_PAGE)
            for entry in page:
                yield entry
            if len(page) < PENDING_PAGE:
                return
            start = "(" + text(page[-1]["message_id"])

    async def _retry_delay(self, stream: str, p: int, entry_id: str) -> int | None:
        entries = cast(Entries, await self.redis.xrange(stream, entry_id, entry_id))
        if not entries:
            return 0  # deleted meanwhile: claim it so it is acked as stale
        notification = text(entries[0][1].get(b"n"))
        delay = text(await self.redis.hget(keys.notification(p, notification), "retry_delay"))
        return int(delay) if delay.isdigit() else 0

    # --- 4. maintenance -------------------------------------------------------------------------------------
    async def _maintenance_loop(self, stop: asyncio.Event) -> None:
        interval = self.settings.maintenance_interval_s
        if interval <= 0 or self.engine is None:
            await stop.wait()  # off: a loop that ended would stop the notifier (run() waits for the first)
            return
        while not stop.is_set():
            try:
                if await self.redis.set(keys.maintenance_lock(), self.name, nx=True, ex=interval):
                    report = await run_maintenance(self.settings, self.redis, self.engine, now_ms=now_ms())
                    log.info("maintenance: %s", report.summary())
            except Exception:
                log.exception("scheduled maintenance failed")
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), min(MAINTENANCE_CHECK_S, interval))

    def metrics(self) -> list[Metric]:
        return [
            Metric("orq_notifications_total", "counter", "notification events this process wrote, by kind",
                   {(("kind", kind),): float(n) for kind, n in self.counts.items()}),
            Metric("orq_notifier_deliveries_in_flight", "gauge", "delivery attempts in progress",
                   {(): float(len(self._inflight))}),
        ]


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """``orq notifier``: deliver notifications and run the scheduled maintenance until ``stop`` is set."""
    async with Service(settings, stop, sql=True) as service, httpx.AsyncClient(follow_redirects=False) as client:
        notifier = Notifier(settings, service.redis, service.committer, Deliverer(settings, client), service.engine)
        await service.serve_metrics(notifier.metrics)
        log.info("notifier %s starting on %d partitions", notifier.name, settings.partitions)
        await notifier.run(stop)

