"""The projector: folds each partition's log into the SQL projections, archive and checkpoint in one txn.

Every instance heartbeats in a registry and holds at most its fair share (``ceil(partitions / live
instances)``) of partition locks; each held partition runs its own loop:

1. take over: claim every pending entry of group ``projector`` on ``orq:{p}:log`` (a previous owner's
   unacked batch), then read them first, in id order;
2. read a batch (own pending first, then new entries) with a Lua script fenced by the lock;
3. skip entries at or below the checkpoint, load the rows the rest touch, fold them
   (:class:`shared.readmodel.projection.Projection`), upsert what changed, archive every entry, compare-and-set the
   checkpoint: one transaction;
4. ack them (the next read's script does, saving a round trip; or the release when the partition is let
   go). A crash between commit and ack redelivers entries the checkpoint already covers: they are skipped,
   so nothing is applied twice and nothing is lost.

A batch that fails because of its data is split to find the events that cannot be projected; those are
quarantined and the partition goes on (:mod:`services.projector.quarantine`). A batch that fails because of
the database is retried whole, with exponential backoff (:mod:`services.projector.failures`). Between
batches, requested retries of quarantined events are applied (:mod:`services.projector.retry`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from functools import partial

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.projector import quarantine
from services.projector.failures import backoff_s, describe, is_data_error
from services.projector.locks import LOCK_TTL_MS, PartitionLocks, ReadResult
from services.projector.retry import RETRY_POLL_S, requested, retry_all
from services.projector.store import Fenced, Store, decode_records
from shared.domain.aggregates import FINISHED
from shared.infra.clock import now_ms, stream_id_parts
from shared.infra.settings import PROJECTOR_BATCH, STATE_RETENTION_S, Settings
from shared.log import keys
from shared.log.commit import load_lua
from shared.log.consumer import Record
from shared.log.durability import check_rewind
from shared.log.events import ExecutionCancelled, ExecutionCompleted, ExecutionDeadLettered, ExecutionFailed
from shared.log.redis import ensure_groups, read_streams
from shared.readmodel.db import is_sqlite
from shared.readmodel.projection import Projection, needs_of
from shared.service.bootstrap import Service
from shared.service.metrics import Metric, counter

log = logging.getLogger(__name__)

IDLE_BLOCK_MS = 500
# Rows kept in memory per held partition between batches (saves the SELECTs of rows a batch touches again).
CACHE_ROWS = 50_000
# More than a pool holds (10 + 10 overflow): looking for a current session ends by opening a new one.
STALE_SESSIONS_MAX = 25

# Called after a batch of partition ``p`` committed (last id applied), before it is acked.
AfterCommit = Callable[[int, str], None]

# Events after which an execution has ended (a retry may revive it: ``execution.requeued`` persists it).
ENDINGS = (ExecutionCompleted, ExecutionFailed, ExecutionCancelled, ExecutionDeadLettered)


def _pos(stream_id: str | None) -> tuple[int, int]:
    return (0, 0) if not stream_id else stream_id_parts(stream_id)


class LostPartition(Exception):
    """This instance no longer holds the partition's lock."""


@dataclass(slots=True)
class HeldPartition:
    """A partition this instance holds, and the task applying it."""

    p: int
    checkpoint: str | None = None
    last_id: str = "0-0"  # the stream's last id when a read found nothing: wait for entries after it
    ack_upto: str = ""  # entries up to here are applied: acked by the next read (saves a round trip)
    # Rows of this partition as committed: only the lock holder writes them, so they stay true while held.
    cache: Projection = field(default_factory=Projection)
    # Kept for the partition's life: no pool checkout (and pre-ping round trip) per batch.
    conn: AsyncConnection | None = None
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    failures: int = 0  # consecutive failed attempts (for the backoff)
    retries_due: float = 0.0  # monotonic time to look for requested retries of quarantined events again
    ended: set[str] = field(default_factory=set)  # executions whose ending is projected, awaiting their TTL

    async def connection(self, engine: AsyncEngine) -> AsyncConnection:
        if self.conn is None:
            self.conn = await engine.connect()
        return self.conn

    async def close(self) -> None:
        """Give the database connection back (invalidated, in case it is what broke)."""
        conn, self.conn = self.conn, None
        if conn is not None:
            with suppress(Exception):
                await conn.invalidate()
            with suppress(Exception):
                await conn.close()


class Projector:
    """Applies the logs of the partitions it holds; several instances share the partitions between them."""

    def __init__(
        self,
        redis: Redis,
        engine: AsyncEngine,
        *,
        partitions: int,
        batch: int = PROJECTOR_BATCH,
        consumer: str | None = None,
        lock_ttl_ms: int = LOCK_TTL_MS,
        idle_block_ms: int = IDLE_BLOCK_MS,
        after_commit: AfterCommit | None = None,
        cache_rows: int = CACHE_ROWS,
        accept_rewind: bool = False,
        state_retention_s: int = STATE_RETENTION_S,
    ) -> None:
        self.redis = redis
        self.engine = engine
        self.partitions = partitions
        self.batch = batch
        self.consumer = consumer or f"projector-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.lock_ttl_ms = lock_ttl_ms
        self.idle_block_ms = min(idle_block_ms, lock_ttl_ms // 3)
        self.after_commit = after_commit
        self.cache_rows = cache_rows
        self.accept_rewind = accept_rewind  # ORQ_ACCEPT_REWOUND_REDIS: see shared.log.durability.check_rewind
        self.state_retention_s = state_retention_s  # ORQ_STATE_RETENTION_S: see _expire_ended
        self._expire_ended_script = redis.register_script(load_lua("services.projector", "projector_expire_ended.lua"))
        self.locks = PartitionLocks(redis, token=self.consumer, ttl_ms=lock_ttl_ms)
        self.store = Store(engine)
        self.held: dict[int, HeldPartition] = {}
        self.applied = 0  # events folded (for metrics and benchmarks)
        self.quarantined = 0  # events set aside (orq_projection_quarantined_total)
        # SQLite has one writer: concurrent partition transactions would only fail with "database is locked".
        self._db_slots = asyncio.Semaphore(1 if is_sqlite(engine) else max(1, partitions))
        self._stop = asyncio.Event()
        # Where this instance starts looking for free partitions, so instances starting together spread out.
        self._offset = keys.partition_of(self.consumer, partitions)

    # --- lifecycle ------------------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Hold and apply partitions until ``stop`` is set; then finish the batches in hand and release."""
        self._stop = stop
        await ensure_groups(self.redis, [keys.log(p) for p in range(self.partitions)], keys.GROUP_PROJECTOR)
        tick_s = self.lock_ttl_ms / 3000
        try:
            while not stop.is_set():
                try:
                    await self.maintain()
                except Exception:
                    log.exception("projector maintenance failed")
                with suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), tick_s)
        finally:
            await self._shutdown()

    async def maintain(self) -> None:
        """Heartbeat, renew held locks, reap finished partition loops, and take or give up partitions."""
        fair = await self._fair_share()
        for held in list(self.held.values()):
            if held.task is not None and held.task.done():
                await self._forget(held)
            elif not await self.locks.renew(held.p):
                log.warning("projector %s lost the lock of partition %d", self.consumer, held.p)
                held.stop.set()
        active = [h for h in self.held.values() if not h.stop.is_set()]
        for held in sorted(active, key=lambda h: h.p, reverse=True)[: max(0, len(active) - fair)]:
            log.info("projector %s hands partition %d over (fair share %d)", self.consumer, held.p, fair)
            held.stop.set()
        for i in range(self.partitions):
            if len(self.held) >= fair:
                break
            p = (self._offset + i) % self.partitions
            if p not in self.held and await self.locks.acquire(p):
                held = self.held[p] = HeldPartition(p)
                held.task = asyncio.create_task(self._partition_loop(held), name=f"projector-{p}")
                log.info("projector %s holds partition %d", self.consumer, p)

    async def _fair_share(self) -> int:
        now = now_ms()
        members = keys.projector_members()
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(members, {self.consumer: now})
            pipe.zremrangebyscore(members, "-inf", now - self.lock_ttl_ms)
            pipe.zcard(members)
            replies = await pipe.execute()
        return math.ceil(self.partitions / max(1, int(replies[-1])))

    async def _forget(self, held: HeldPartition) -> None:
        self.held.pop(held.p, None)
        await self.locks.release(held.p)

    async def _shutdown(self) -> None:
        for held in self.held.values():
            held.stop.set()
        tasks = [h.task for h in self.held.values() if h.task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)
        for held in list(self.held.values()):
            await self._forget(held)
        await self.redis.zrem(keys.projector_members(), self.consumer)

    # --- one partition --------------------------------------------------------------------------------------
    async def _partition_loop(self, held: HeldPartition) -> None:
        p = held.p
        try:
            # Again here, not only at start: a stream deleted meanwhile (tests, a wiped dev Redis) comes back.
            await ensure_groups(self.redis, [keys.log(p)], keys.GROUP_PROJECTOR)
            claimed = await self.locks.take_over(p, self.consumer)
            if claimed is None:
                return
            if claimed:
                log.info("partition %d: took over %d pending entries", p, claimed)
            await self._reload_checkpoint(held)
            if not await check_rewind(self.redis, p, held.checkpoint, accept=self.accept_rewind):
                return  # said loudly; tried again (and said again) at every maintenance tick
            while not (held.stop.is_set() or self._stop.is_set()):
                if not await self.step(held):
                    await self._idle(held)
        except LostPartition:
            log.warning("partition %d: lock lost, stopping", p)
        except Exception:
            log.exception("partition %d: projector loop failed", p)
        finally:
            held.stop.set()
            await held.close()
            if held.ack_upto:
                with suppress(Exception):  # unacked entries are skipped by the checkpoint anyway
                    await self.locks.ack(p, self.consumer, held.ack_upto)
            await self.locks.release(p)

    async def step(self, held: HeldPartition) -> bool:
        """Read and apply one batch of ``held``'s partition; False when there was nothing to read."""
        try:
            await self._retry_quarantined(held)
            result = await self.locks.read(held.p, self.consumer, self.batch, held.ack_upto)
            if result is None:
                raise LostPartition(held.p)
            held.ack_upto = ""
            held.last_id = result.last_id
            if result.ids:
                await self.apply(held, result)
            held.failures = 0
            return bool(result.ids)
        except LostPartition:
            raise
        except Exception as exc:  # the database failed (not the data): the batch stays pending, read again later
            delay = backoff_s(held.failures)
            held.failures += 1
            # Loud once (with the traceback), then one line per attempt: the backoff bounds the noise.
            log.log(logging.ERROR if held.failures == 1 else logging.WARNING,
                    "partition %d: batch failed (attempt %d; again in %.0f s): %s", held.p, held.failures, delay,
                    describe(exc), exc_info=held.failures == 1)
            with suppress(TimeoutError):  # a stop (SIGTERM, hand-over) ends the wait
                await asyncio.wait_for(held.stop.wait(), delay)
            with suppress(Exception):  # the database may be what failed; the next attempt will tell
                await self._reload_checkpoint(held)
            return True

    async def _reload_checkpoint(self, held: HeldPartition) -> None:
        conn = await held.connection(self.engine)
        async with conn.begin():
            held.checkpoint = await self.store.checkpoint(conn, held.p)

    async def _idle(self, held: HeldPartition) -> None:
        # Wake as soon as an entry after the last one seen arrives (or after a short block, to notice stop).
        await read_streams(self.redis, {keys.log(held.p): held.last_id}, count=1, block_ms=self.idle_block_ms)

    async def apply(self, held: HeldPartition, batch: ReadResult) -> None:
        """Apply entries not yet covered by the checkpoint in one transaction (or, when their data fails it,
        in parts, quarantining what cannot be applied); they are acked after that (by the next read, or when
        the partition is let go)."""
        p = held.p
        records = batch.records
        for attempt in range(2):
            after = _pos(held.checkpoint)
            fresh = records if records and _pos(records[0].id) > after else [r for r in records if _pos(r.id) > after]
            if not fresh:
                break
            try:
                await quarantine.apply_or_set_aside(fresh, partial(self._commit, held), partial(self._set_aside, held),
                                                    label=f"partition {p}")
                break
            except Fenced:
                if attempt or not await self.locks.renew(p):
                    raise LostPartition(p) from None
                await self._reload_checkpoint(held)
                held.cache = Projection()  # another projector changed rows behind it
                log.warning("partition %d: checkpoint moved by another projector; now %s", p, held.checkpoint)
        held.ack_upto = batch.ids[-1]

    async def _commit(self, held: HeldPartition, records: list[Record]) -> None:
        decoded = decode_records(held.p, records)
        events = [d.event for d in decoded if d.event is not None]
        last_id = records[-1].id
        cache = held.cache
        try:
            conn = await held.connection(self.engine)
            async with self._db_slots, conn.begin():
                # Checkpoint first: on MySQL it locks the row, so a competing writer of this partition waits
                # here and then finds the checkpoint moved (Fenced) instead of failing on a duplicate row.
                await self.store.move_checkpoint(conn, held.p, held.checkpoint, last_id, now_ms())
                await self.store.load(conn, cache, cache.missing(needs_of(events, never_applied=True)))
                cache.apply_all(events)
                await self.store.write(conn, cache)
                await self.store.archive(conn, [d.archive for d in decoded])
        except BaseException as exc:
            await self._failed(held, exc)
            raise
        held.checkpoint = last_id
        cache.drop_written()
        if cache.size() > self.cache_rows:
            cache.evict()
        self.applied += len(records)
        held.ended.update(e.aggregate_id for e in events if isinstance(e, ENDINGS))
        await self._expire_ended(held)
        if self.after_commit is not None:
            self.after_commit(held.p, last_id)

    async def _expire_ended(self, held: HeldPartition) -> None:
        """Give the Redis state of executions whose ending SQL now holds its retention TTL: one script call
        for the batch. Never before the commit (SQL must be able to answer for it once it is gone). A Redis
        failure here must not undo a committed batch: the ids wait for the next batch's call."""
        if not held.ended:
            return
        ids = sorted(held.ended)
        try:
            await self._expire_ended_script(keys=[keys.execution(held.p, i) for i in ids],
                                            args=[self.state_retention_s, *sorted(FINISHED)])
        except Exception as exc:  # the next batch tries again; a projector that dies now leaves them unexpired
            log.warning("partition %d: could not set the retention of %d ended executions: %s", held.p, len(ids),
                        describe(exc))
            return
        held.ended.difference_update(ids)

    async def _set_aside(self, held: HeldPartition, record: Record, exc: BaseException) -> None:
        """Quarantine ``record`` (it failed alone, because of its data) and move the checkpoint past it, in
        one transaction."""
        [decoded] = decode_records(held.p, [record])
        error, now = describe(exc), now_ms()
        try:
            conn = await held.connection(self.engine)
            async with self._db_slots, conn.begin():
                await self.store.move_checkpoint(conn, held.p, held.checkpoint, record.id, now)
                rows = quarantine.rows_for(decoded, error, now, await self.store.body_chunk_bytes(conn))
                await quarantine.insert_rows(conn, rows)
        except BaseException as failure:
            await self._failed(held, failure)
            raise
        held.checkpoint = record.id
        self.quarantined += 1
        quarantine.report(held.p, decoded, error)

    async def _failed(self, held: HeldPartition, exc: BaseException) -> None:
        """A transaction failed: the cache holds changes that were rolled back. Unless the data or a moved
        checkpoint was the reason, the connection may be what broke: the next attempt starts on a new one, and
        reads the server's settings again (it may be another server, with another max_allowed_packet)."""
        held.cache = Projection()
        if isinstance(exc, Fenced) or (isinstance(exc, Exception) and is_data_error(exc)):
            return
        self.store.forget_server()
        await held.close()

    async def _retry_quarantined(self, held: HeldPartition) -> None:
        """Apply the retries ``orq quarantine retry`` requested for this partition (looked for every
        ``RETRY_POLL_S``), on a new connection: the fix may be a server setting only new sessions see."""
        if time.monotonic() < held.retries_due:
            return
        held.retries_due = time.monotonic() + RETRY_POLL_S
        if not (wanted := await requested(await held.connection(self.engine), held.p)):
            return
        held.cache = Projection()  # retried events change rows this cache may hold
        try:
            async with self._db_slots:
                await retry_all(await self._current_connection(held), self.store, wanted, held.checkpoint,
                                partial(self.locks.renew, held.p))
        except Fenced:
            await self._reload_checkpoint(held)
        except BaseException as exc:
            await self._failed(held, exc)
            raise
        finally:
            held.retries_due = time.monotonic() + RETRY_POLL_S

    async def _current_connection(self, held: HeldPartition) -> AsyncConnection:
        """A connection whose session sees the server's current settings: the fix being retried may be a
        larger ``max_allowed_packet``, which only sessions opened since have. Closing ours discards it from
        the pool (invalidated), so each round gets another pooled session or a new one."""
        for _ in range(STALE_SESSIONS_MAX):
            await held.close()
            conn = await held.connection(self.engine)
            if await self.store.session_is_current(conn):
                return conn
        return conn


def projector_metrics(projector: Projector) -> list[Metric]:
    """The projector's own counters for ``/metrics``."""
    return [
        counter("orq_projector_events_applied_total", "events this projector folded", projector.applied),
        counter("orq_projection_quarantined_total", "events this projector could not project and set aside "
                "(orq quarantine list)", projector.quarantined),
    ]


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """``orq projector``: create the schema and groups, then project until ``stop`` is set."""
    async with Service(settings, stop, committer=False, sql=True) as service:
        projector = Projector(service.redis, service.engine, partitions=settings.partitions,
                              batch=settings.projector_batch, accept_rewind=settings.accept_rewound_redis,
                              state_retention_s=settings.state_retention_s)
        await service.serve_metrics(lambda: projector_metrics(projector))
        log.info("projector %s starting on %d partitions", projector.consumer, settings.partitions)
        await projector.run(stop)
