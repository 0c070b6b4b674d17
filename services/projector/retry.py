"""Retrying quarantined events after a fix (``orq quarantine retry``).

A retry re-applies the stored event through the same fold, writes the rows it changes, archives it and
removes it from quarantine, in one transaction. Only the applier of a partition writes its rows, so a retry
is done by whoever holds the partition's lock:

* a projector that holds it picks up requested retries (``retry_requested_at``) between batches
  (:meth:`services.projector.projector.Projector.step`, every ``RETRY_POLL_S``);
* when no projector holds it, the command takes the lock and does it itself (:func:`retry_unheld`).

The retry is fenced like a batch: its transaction compare-and-sets the checkpoint to its own value, so a
projector that lost the partition cannot retry, and a retry waits for the batch in flight on MySQL (the row
lock). A retry that fails again because of the data keeps the event quarantined with the new error
(``retries`` + 1); a database failure leaves the request in place for the next attempt.

Applied late: the event is folded on top of the current rows, as if it arrived now. Where later events of
the same rows were projected meanwhile, values they set may be overwritten by the older event's (a step's
status if that step ran again, ``updated_at``); the archive keeps the event at its own place in the stream,
so ``orq replay`` gives the in-order rows.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from functools import partial

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.projector import quarantine
from services.projector.failures import describe, is_data_error
from services.projector.locks import LOCK_TTL_MS, PartitionLocks
from services.projector.quarantine import Quarantined
from services.projector.store import Fenced, Store, decode_records
from shared.infra.clock import now_ms
from shared.log.consumer import Record
from shared.readmodel.projection import Projection, needs_of

log = logging.getLogger(__name__)

RETRY_POLL_S = 2.0

Holds = Callable[[], Awaitable[bool]]


async def reapply(conn: AsyncConnection, store: Store, entry: Quarantined) -> None:
    """Fold the stored event into the rows it touches, write them, archive it, remove it from quarantine (in
    the caller's transaction). An event this version cannot decode is archived and skipped, as live."""
    record = Record(entry.stream_id, entry.type, await quarantine.body_of(conn, entry))
    [decoded] = decode_records(entry.partition, [record])
    if decoded.event is not None:
        projection = Projection()  # fresh: its watermark would skip an event older than the ones applied since
        await store.load(conn, projection, needs_of([decoded.event]))
        projection.apply(decoded.event)
        await store.write(conn, projection)
    await store.archive(conn, [decoded.archive])
    await quarantine.remove(conn, entry)


async def retry_one(conn: AsyncConnection, store: Store, entry: Quarantined, checkpoint: str | None) -> str | None:
    """Retry ``entry`` in one transaction fenced by ``checkpoint``; None when applied, else the data error
    (recorded on the entry). Raises :class:`Fenced` and database errors (the request stays)."""
    try:
        async with conn.begin():
            if checkpoint is not None:
                await store.move_checkpoint(conn, entry.partition, checkpoint, checkpoint, now_ms())
            await reapply(conn, store, entry)
    except Fenced:
        raise
    except Exception as exc:
        if not is_data_error(exc):
            store.forget_server()
            raise
        error = describe(exc)
    else:
        log.info("partition %d: quarantined event %s (%s) applied on retry", entry.partition, entry.stream_id,
                 entry.type, extra={"tenant_id": entry.tenant_id})
        return None
    async with conn.begin():
        await quarantine.record_failure(conn, entry, error, now_ms())
    log.error("partition %d: retry of quarantined event %s (%s) failed again: %s", entry.partition,
              entry.stream_id, entry.type, error, extra={"tenant_id": entry.tenant_id})
    return error


async def requested(conn: AsyncConnection, p: int) -> list[Quarantined]:
    """Partition ``p``'s entries that ``orq quarantine retry`` asked to retry."""
    async with conn.begin():
        return await quarantine.listing(conn, partition=p, requested_only=True)


async def retry_all(
    conn: AsyncConnection, store: Store, wanted: Sequence[Quarantined], checkpoint: str | None, holds: Holds
) -> None:
    """Retry ``wanted`` (entries of one partition) while ``holds()`` (the partition's lock is still ours).

    ``conn`` should be a current session: the fix being retried may be a server setting (a larger
    ``max_allowed_packet``) that only sessions opened since see.
    """
    for entry in wanted:
        if not await holds():
            return
        await retry_one(conn, store, entry, checkpoint)


async def retry_unheld(redis: Redis, engine: AsyncEngine, partitions: Sequence[int]) -> list[int]:
    """For each of ``partitions`` that no projector holds: take its lock, retry its requested entries, let
    it go. Returns the partitions done here (the others are left to the projectors holding them)."""
    locks = PartitionLocks(redis, token=f"quarantine-retry-{uuid.uuid4().hex}", ttl_ms=LOCK_TTL_MS)
    store = Store(engine)
    done = []
    for p in partitions:
        if not await locks.acquire(p):
            continue
        try:
            async with engine.connect() as conn:
                async with conn.begin():
                    checkpoint = await store.checkpoint(conn, p)
                await retry_all(conn, store, await requested(conn, p), checkpoint, partial(locks.renew, p))
        finally:
            await locks.release(p)
        done.append(p)
    return done
