"""``orq replay``: rebuild every projection table from the event archive plus the streams' tail.

Replay takes every partition's projector lock for its whole run, so it refuses to start (``Conflict``)
while a live projector holds one, and a projector started meanwhile waits until replay is done. It then

1. empties the projection tables (``shared.readmodel.schema.PROJECTION_TABLES``; never the archive or checkpoints);
2. folds every archived event, partition by partition in (ms, seq) order, with the live projector's fold
   and writes (rows are cached across batches and written once per batch);
3. folds the tail of each stream after its checkpoint (entries not projected yet), archiving them and
   moving the checkpoint in the same transaction, exactly as the live projector would — including setting
   aside (quarantining) an event that cannot be projected.

Quarantined events are not in the archive (``projection_quarantine`` keeps them), so replay skips them just
as the live projection did, and gives the same rows; the quarantine table is left as it is. An event retried
successfully (``orq quarantine retry``) is in the archive at its own place in the stream, so replay folds it
in order.

Step 1 commits on its own (MySQL's ``TRUNCATE`` always does): a replay that dies midway leaves partial
tables, and running it again rebuilds them.
"""

from __future__ import annotations

import asyncio
import binascii
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import suppress
from functools import partial
from typing import Any

import msgspec
from redis.asyncio import Redis
from sqlalchemy import and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from tqdm import tqdm

from services.projector import quarantine
from services.projector.failures import describe
from services.projector.locks import LOCK_TTL_MS, PartitionLocks
from services.projector.store import Store, Writes, decode_records
from shared.infra.clock import now_ms, stream_id_parts
from shared.infra.errors import Conflict
from shared.infra.settings import Settings
from shared.log import keys
from shared.log.consumer import Record, records_of
from shared.log.events import Event, decode
from shared.log.redis import client_for
from shared.readmodel import schema
from shared.readmodel.db import create_engine, create_schema
from shared.readmodel.projection import Projection, needs_of

log = logging.getLogger(__name__)

REPLAY_BATCH = 5_000
# Rows kept in memory between batches (most events touch rows of recent batches); past this, start afresh.
CACHE_ROWS = 200_000


class LockLost(Exception):
    """A partition lock expired during the replay (the process stalled past its TTL)."""


class Replayer:
    """Rebuilds the projections of ``partitions`` partitions; use :func:`replay`."""

    def __init__(
        self, redis: Redis, engine: AsyncEngine, *, partitions: int, batch: int = REPLAY_BATCH,
        lock_ttl_ms: int = LOCK_TTL_MS, cache_rows: int = CACHE_ROWS,
    ) -> None:
        self.redis = redis
        self.engine = engine
        self.partitions = partitions
        self.batch = batch
        self.cache_rows = cache_rows
        self.store = Store(engine)
        self.locks = PartitionLocks(redis, token=f"replay-{uuid.uuid4().hex}", ttl_ms=lock_ttl_ms)
        self.projection = Projection()
        self.count = 0
        self.quarantined = 0  # tail events set aside
        self._checkpoint: str | None = None  # of the partition whose tail is being folded
        self._lost = False

    async def run(self, show_progress: bool = False) -> int:
        """Replay everything; returns the number of events read (archive plus tail)."""
        held: list[int] = []
        renewer: asyncio.Task[None] | None = None
        try:
            for p in range(self.partitions):
                if not await self.locks.acquire(p):
                    holder = await self.locks.holder(p)
                    raise Conflict(
                        f"partition {p} is being projected by {holder}; stop every projector before replaying",
                        partition=p,
                        holder=holder,
                    )
                held.append(p)
            renewer = asyncio.create_task(self._renew(held), name="replay-locks")
            return await self._replay(show_progress)
        finally:
            if renewer is not None:
                renewer.cancel()
                with suppress(asyncio.CancelledError):
                    await renewer
            for p in held:
                await self.locks.release(p)

    async def _renew(self, held: Sequence[int]) -> None:
        while True:
            await asyncio.sleep(self.locks.ttl_ms / 3000)
            for p in held:
                if not await self.locks.renew(p):
                    log.error("replay lost the lock of partition %d", p)
                    self._lost = True

    def _check_locks(self) -> None:
        if self._lost:
            raise LockLost("a partition lock expired during replay; run it again")

    async def _replay(self, show_progress: bool) -> int:
        async with self.engine.begin() as conn:
            await self.store.truncate(conn)
            archived = (await conn.execute(select(func.count()).select_from(schema.event_archive))).scalar_one()
        with tqdm(total=int(archived), unit="ev", desc="replay", disable=not show_progress) as bar:
            for p in range(self.partitions):
                last = await self._replay_archive(p, bar)
                await self._replay_tail(p, last, bar)
        log.info("replayed %d events (%d from the archive, %d quarantined)", self.count, archived, self.quarantined)
        return self.count

    async def _replay_archive(self, p: int, bar: tqdm[Any]) -> tuple[int, int]:
        """Fold partition ``p``'s archive; returns the last archived (ms, seq).

        Three stages overlap: the next page is read while this one is folded, and the rows a page changed
        are written (rendered first, so folding the next page cannot change them) while the next is folded.
        """
        last = (-1, -1)
        writes: asyncio.Queue[Writes | None] = asyncio.Queue(maxsize=2)
        writer = asyncio.create_task(self._write_all(writes), name=f"replay-writer-{p}")
        try:
            async with self.engine.connect() as conn:
                async with conn.begin():
                    await self.store.prepare(conn)
                async for rows in self.archive_pages(p):
                    self._check_locks()
                    records = [Record(f"{ms}-{seq}", "", body) for ms, seq, body in rows]
                    events = [e for e in map(_decode, records) if e is not None]
                    async with conn.begin():  # loads see every write committed so far
                        await self.store.load(
                            conn, self.projection, self.projection.missing(needs_of(events, never_applied=True))
                        )
                    self.projection.apply_all(events)
                    await _put(writes, self.store.render(self.projection), writer)
                    last = (rows[-1][0], rows[-1][1])
                    self.count += len(rows)
                    bar.update(len(rows))
                    self.projection.drop_written()
                    if self.projection.size() > self.cache_rows:
                        await _put(writes, None, writer)  # evicted rows must be stored before they are reloaded
                        await writer
                        self.projection.evict()
                        writer = asyncio.create_task(self._write_all(writes), name=f"replay-writer-{p}")
            await _put(writes, None, writer)
            await writer
        finally:
            if not writer.done():
                writer.cancel()
                with suppress(asyncio.CancelledError):
                    await writer
        return last

    async def _write_all(self, writes: asyncio.Queue[Writes | None]) -> None:
        async with self.engine.connect() as conn:
            while (batch := await writes.get()) is not None:
                async with conn.begin():
                    await self.store.execute(conn, batch)

    async def archive_pages(self, p: int) -> AsyncIterator[list[tuple[int, int, bytes]]]:
        """Pages of ``p``'s archive in (ms, seq) order; the next page is read while the caller folds this one."""
        pages: asyncio.Queue[list[tuple[int, int, bytes]]] = asyncio.Queue(maxsize=2)
        table = schema.event_archive

        async def read() -> None:
            ms, seq = -1, -1
            async with self.engine.connect() as conn:
                if not self.store.sqlite:
                    await conn.exec_driver_sql("SET SESSION group_concat_max_len = 4294967295")
                while True:
                    rows = None if self.store.sqlite else await _mysql_page(conn, p, ms, seq, self.batch)
                    if rows is None:
                        stmt = (
                            select(table.c.ms, table.c.seq, table.c.body)
                            .where(
                                table.c.partition == p,
                                or_(table.c.ms > ms, and_(table.c.ms == ms, table.c.seq > seq)),
                            )
                            .order_by(table.c.ms, table.c.seq)
                            .limit(self.batch)
                        )
                        rows = [(int(r[0]), int(r[1]), bytes(r[2])) for r in (await conn.execute(stmt)).all()]
                    await conn.rollback()  # no snapshot held between pages
                    await pages.put(rows)
                    if not rows:
                        return
                    ms, seq = rows[-1][0], rows[-1][1]

        reader = asyncio.create_task(read(), name=f"replay-archive-{p}")
        try:
            while rows := await _next_page(pages, reader):
                yield rows
        finally:
            reader.cancel()
            with suppress(asyncio.CancelledError):
                await reader

    async def _replay_tail(self, p: int, archived: tuple[int, int], bar: tqdm[Any]) -> None:
        """Fold, archive and checkpoint the entries of ``orq:{p}:log`` after the checkpoint (quarantining those
        that cannot be projected, as live)."""
        async with self.engine.connect() as conn:
            self._checkpoint = await self.store.checkpoint(conn, p)
        start = max(stream_id_parts(self._checkpoint) if self._checkpoint else (0, 0),
                    archived if archived[0] >= 0 else (0, 0))
        after = f"{start[0]}-{start[1]}"
        while True:
            self._check_locks()
            entries = await self.redis.xrange(keys.log(p), min=f"({after}", count=self.batch)
            if not entries:
                return
            records = records_of(entries)  # type: ignore[arg-type]  # redis-py's reply type is too loose
            bar.total = (bar.total or 0) + len(records)
            await quarantine.apply_or_set_aside(records, partial(self._commit_tail, p), partial(self._set_aside, p),
                                                label=f"replay of partition {p}")
            after = records[-1].id
            self.count += len(records)
            bar.update(len(records))

    async def _commit_tail(self, p: int, records: list[Record]) -> None:
        decoded = decode_records(p, records)
        last_id = records[-1].id
        try:
            async with self.engine.begin() as conn:
                await self._fold(conn, [d.event for d in decoded if d.event is not None])
                await self.store.archive(conn, [d.archive for d in decoded])
                await self.store.move_checkpoint(conn, p, self._checkpoint, last_id, now_ms())
        except BaseException:
            self.projection = Projection()  # it holds changes that were rolled back
            self.store.forget_server()
            raise
        self._checkpoint = last_id
        self._trim_cache()

    async def _set_aside(self, p: int, record: Record, exc: BaseException) -> None:
        [decoded] = decode_records(p, [record])
        error, now = describe(exc), now_ms()
        async with self.engine.begin() as conn:
            await self.store.move_checkpoint(conn, p, self._checkpoint, record.id, now)
            rows = quarantine.rows_for(decoded, error, now, await self.store.body_chunk_bytes(conn))
            await quarantine.insert_rows(conn, rows)
        self._checkpoint = record.id
        self.quarantined += 1
        quarantine.report(p, decoded, error)

    async def _fold(self, conn: AsyncConnection, events: list[Event]) -> None:
        await self.store.load(conn, self.projection, self.projection.missing(needs_of(events, never_applied=True)))
        self.projection.apply_all(events)
        await self.store.write(conn, self.projection)

    def _trim_cache(self) -> None:
        self.projection.drop_written()
        if self.projection.size() > self.cache_rows:
            self.projection.evict()


# One row per page instead of one per event: aiomysql parses every row packet in Python (with two awaits),
# which made reading the archive most of a replay's CPU. Bodies travel as base64 inside the JSON text.
_MYSQL_PAGE = (
    "SELECT COUNT(*), JSON_ARRAYAGG(JSON_ARRAY(ms, seq, TO_BASE64(body))) FROM ("
    "SELECT ms, seq, body FROM event_archive WHERE `partition` = %s AND (ms > %s OR (ms = %s AND seq > %s)) "
    "ORDER BY ms, seq LIMIT %s) AS page"
)
_page_decoder = msgspec.json.Decoder(list[tuple[int, int, str]])


async def _mysql_page(
    conn: AsyncConnection, p: int, ms: int, seq: int, limit: int
) -> list[tuple[int, int, bytes]] | None:
    """A page of the archive as one JSON document; None when the server could not build it whole (past
    ``max_allowed_packet`` it truncates the document, with a warning)."""
    row = (await conn.exec_driver_sql(_MYSQL_PAGE, (p, ms, ms, seq, limit))).one()
    count, raw = list(row)
    count = int(count)
    if count == 0:
        return []
    try:
        page = _page_decoder.decode(raw.encode() if isinstance(raw, str) else raw or b"")
    except msgspec.DecodeError:
        return None
    if len(page) != count:
        return None
    page.sort()  # JSON_ARRAYAGG keeps the subquery's order in practice; sorting makes it certain
    return [(m, s, binascii.a2b_base64(body)) for m, s, body in page]


async def _put(queue: asyncio.Queue[Writes | None], item: Writes | None, writer: asyncio.Task[None]) -> None:
    """Hand ``item`` to the writer, or raise what made the writer stop."""
    putter = asyncio.ensure_future(queue.put(item))
    await asyncio.wait([putter, writer], return_when=asyncio.FIRST_COMPLETED)
    if putter.done():
        return
    putter.cancel()
    writer.result()
    raise RuntimeError("replay writer stopped early")


async def _next_page(
    pages: asyncio.Queue[list[tuple[int, int, bytes]]], reader: asyncio.Task[None]
) -> list[tuple[int, int, bytes]]:
    """The next page, or the reader's error if it failed before producing one."""
    getter = asyncio.ensure_future(pages.get())
    await asyncio.wait([getter, reader], return_when=asyncio.FIRST_COMPLETED)
    if getter.done():
        return getter.result()
    getter.cancel()
    reader.result()  # raises what the reader raised
    raise RuntimeError("archive reader stopped early")


def _decode(record: Record) -> Event | None:
    try:
        return decode(record.body, record.id)
    except (msgspec.DecodeError, msgspec.ValidationError):  # archived as undecodable or of an unknown type
        log.debug("skipping archived entry %s of type %r", record.id, record.type)
        return None


async def replay(settings: Settings, show_progress: bool) -> int:
    """``orq replay``: rebuild every projection; returns how many events were replayed."""
    engine = create_engine(settings.database_url)
    redis = client_for(settings)
    try:
        await create_schema(engine)
        return await Replayer(redis, engine, partitions=settings.partitions, batch=REPLAY_BATCH).run(show_progress)
    finally:
        await redis.aclose()
        await engine.dispose()
