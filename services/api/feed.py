"""The live event feed: one log reader per API process, fanned out to every WebSocket subscriber.

The :class:`FeedHub` reads every partition's log with plain ``XREAD BLOCK`` (no consumer group: a feed
acknowledges nothing and keeps no state in Redis) while at least one subscriber is connected, decodes each
entry once, encodes it to JSON once, and hands it to the bounded buffer of each subscriber of that tenant.
Handing over never waits: a subscriber whose buffer is full is marked overflowed and its connection is
closed (``CLOSE_TOO_SLOW``), so one slow client never slows the reader or the other clients.

Resuming without gaps or duplicates (``since``): :meth:`FeedHub.subscribe` registers the subscription and
returns the reader's position in the tenant's partition at that instant. Every entry after that position
reaches the subscription's buffer; the entries from ``since`` up to that position are read by
:func:`replay` with ``XRANGE``. Subscriptions remember the last id they sent and skip anything not after
it, so the overlap between the two is delivered once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any, cast

from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared.infra.clock import stream_id_parts
from shared.infra.errors import OrqError
from shared.log import keys
from shared.log.consumer import records_of
from shared.log.events import EVENT_TYPES, EventBase, decode, to_json
from shared.log.redis import BLOCK_MS, Entries, text
from shared.log.stream_reads import StreamReads

log = logging.getLogger(__name__)

# Events a subscriber may have waiting before it is dropped as too slow (it resumes with ``since``). One read
# lands in the buffers whole before any sender runs, so the buffer holds several reads.
DEFAULT_BUFFER = 2000
# The same buffer in bytes (counted as JSON characters): events carry step outputs of up to 256 KiB, so 2,000
# of them could be 500 MB for one stalled client. 4 MiB is seconds of traffic for a client that keeps up.
DEFAULT_BUFFER_BYTES = 4 * 1024 * 1024
# Live subscribers (WebSocket connections) of one tenant in one API process: a tenant's dashboards and robots
# with room to spare (200 sockets of one tenant are tested); past it, 1013 (try again). One tenant cannot take
# the whole process's share.
MAX_SUBSCRIBERS_PER_TENANT = 500
# Live subscribers of the process, all tenants (the benchmark's fan-out is 100). Each holds a socket, two tasks
# and a buffer bounded above (which mostly shares its messages with the other subscribers of its tenant).
MAX_SUBSCRIBERS = 5000
READ_COUNT = 250
REPLAY_PAGE = 500
RETRY_AFTER_ERROR_S = 1.0

Position = tuple[int, int]


class TooManySubscribers(OrqError):
    """The tenant or the process has as many live feed subscribers as it may."""

    status = 429
    code = "too_many_subscribers"


def position(stream_id: str) -> Position:
    return stream_id_parts(stream_id)


# Both parts of a Redis stream id are unsigned 64-bit integers.
MAX_ID_PART = 2**64 - 1


def valid_stream_id(value: str) -> bool:
    """``<ms>`` or ``<ms>-<seq>``, both decimal and at most 2^64 - 1, as Redis has them (what ``since`` accepts)."""
    ms, dash, seq = value.partition("-")
    return _id_part(ms) and (not dash or _id_part(seq))


def _id_part(digits: str) -> bool:
    return digits.isascii() and digits.isdigit() and len(digits) <= 20 and int(digits) <= MAX_ID_PART


class TypeFilter:
    """Event types a subscriber wants: exact tags (``step.completed``) or families (``execution.*``)."""

    def __init__(self, patterns: Iterable[str]) -> None:
        self.exact: frozenset[str] = frozenset(p for p in patterns if not p.endswith(".*"))
        self.families: tuple[str, ...] = tuple(p[:-1] for p in patterns if p.endswith(".*"))

    @staticmethod
    def unknown(patterns: Iterable[str]) -> list[str]:
        """Patterns that match no event type (a typo is refused rather than silently matching nothing)."""
        tags = list(EVENT_TYPES)
        return [
            p
            for p in patterns
            if not (p in EVENT_TYPES or (p.endswith(".*") and any(t.startswith(p[:-1]) for t in tags)))
        ]

    def __call__(self, event_type: str) -> bool:
        return event_type in self.exact or any(event_type.startswith(f) for f in self.families)


@dataclass(eq=False)
class Subscription:
    """One subscriber: which events it wants, and the bounded buffer the hub fills for it."""

    tenant_id: str
    partition: int
    execution_id: str | None = None
    types: TypeFilter | None = None
    limit: int = DEFAULT_BUFFER
    limit_bytes: int = DEFAULT_BUFFER_BYTES
    last: Position = (0, 0)
    last_id: str = ""
    overflowed: bool = False
    closed_by_server: bool = False
    _buffer: deque[tuple[Position, str, str]] = field(default_factory=deque)
    _bytes: int = 0
    _ready: asyncio.Event = field(default_factory=asyncio.Event)

    def wants(self, event: EventBase, event_type: str) -> bool:
        if event.tenant_id != self.tenant_id:
            return False
        if self.execution_id is not None and event.aggregate_id != self.execution_id:
            return False
        return self.types is None or self.types(event_type)

    def offer(self, pos: Position, event_id: str, message: str) -> bool:
        """Buffer one message without waiting; False (and overflowed) when the buffer is full."""
        if self.overflowed:
            return False
        if len(self._buffer) >= self.limit or self._bytes + len(message) > self.limit_bytes:
            self.overflowed = True
            self._buffer.clear()
            self._bytes = 0
            self._ready.set()
            return False
        self._buffer.append((pos, event_id, message))
        self._bytes += len(message)
        self._ready.set()
        return True

    def shut(self) -> None:
        """The server is stopping: wake the sender so it closes the connection."""
        self.closed_by_server = True
        self._ready.set()

    async def next_batch(self) -> list[tuple[Position, str, str]]:
        """Wait for messages; an empty list means the subscription must end (overflow or shutdown)."""
        while not self._buffer:
            if self.overflowed or self.closed_by_server:
                return []
            self._ready.clear()
            await self._ready.wait()
        if self.overflowed or self.closed_by_server:
            return []
        batch = list(self._buffer)
        self._buffer.clear()
        self._bytes = 0
        return batch

    def fresh(self, pos: Position) -> bool:
        """Not sent yet (replay and live delivery overlap; ids only grow within a partition)."""
        return pos > self.last

    def sent(self, pos: Position, event_id: str) -> None:
        self.last = pos
        self.last_id = event_id


@dataclass
class FeedStats:
    """Counters shown on ``/metrics``."""

    delivered: int = 0
    dropped: int = 0
    read: int = 0


class FeedHub:
    """The one log reader of this process and the subscriptions it feeds."""

    def __init__(
        self,
        redis: Redis,
        partitions: int,
        *,
        buffer: int = DEFAULT_BUFFER,
        read_count: int = READ_COUNT,
        block_ms: int = BLOCK_MS,
        buffer_bytes: int = DEFAULT_BUFFER_BYTES,
    ) -> None:
        self._redis = redis
        self._partitions = partitions
        self.buffer = buffer
        self.buffer_bytes = buffer_bytes
        self.max_per_tenant = MAX_SUBSCRIBERS_PER_TENANT
        self.max_subscribers = MAX_SUBSCRIBERS
        self.read_count = read_count
        self._block_ms = block_ms
        self._by_tenant: dict[str, set[Subscription]] = {}
        self._count = 0
        self._positions: dict[int, str] = {}
        self._active = False
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._reads = StreamReads(redis)
        self.stats = FeedStats()

    @property
    def subscribers(self) -> int:
        return self._count

    def start(self) -> None:
        if self._task is None and not self._stopping:
            self._task = asyncio.create_task(self._run(), name="feed-reader")

    async def stop(self) -> None:
        """Stop reading and tell every subscriber to close."""
        self._stopping = True
        for subs in self._by_tenant.values():
            for sub in subs:
                sub.shut()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._reads.close()

    def subscription(
        self, tenant_id: str, *, execution_id: str | None = None, types: TypeFilter | None = None
    ) -> Subscription:
        p = keys.partition_of(tenant_id, self._partitions)
        return Subscription(tenant_id, p, execution_id, types, self.buffer, self.buffer_bytes)

    async def subscribe(self, sub: Subscription) -> str:
        """Register ``sub``; returns the stream id after which live delivery starts (replay up to it).

        Raises :class:`TooManySubscribers` when its tenant or the process has all the subscribers it may."""
        self.start()
        async with self._lock:  # subscribes are serialised: the counts checked are the counts added to
            if self._count >= self.max_subscribers:
                raise TooManySubscribers(f"this server has its {self.max_subscribers} live subscribers; try again",
                                         limit=self.max_subscribers)
            if len(self._by_tenant.get(sub.tenant_id, ())) >= self.max_per_tenant:
                raise TooManySubscribers(f"at most {self.max_per_tenant} live subscribers per tenant; try again",
                                         limit=self.max_per_tenant)
            if not self._active:
                # The reader was idle: start it from the logs' ends, not from where it stopped long ago.
                self._positions = await self._last_ids()
                self._active = True
                self._wake.set()
            self._by_tenant.setdefault(sub.tenant_id, set()).add(sub)
            self._count += 1
            return self._positions[sub.partition]

    def unsubscribe(self, sub: Subscription) -> None:
        subs = self._by_tenant.get(sub.tenant_id)
        if subs is None or sub not in subs:
            return
        subs.discard(sub)
        self._count -= 1
        if not subs:
            del self._by_tenant[sub.tenant_id]

    async def _last_ids(self) -> dict[int, str]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for p in range(self._partitions):
                pipe.xrevrange(keys.log(p), count=1)
            replies = await pipe.execute()
        return {p: text(r[0][0]) if r else "0-0" for p, r in enumerate(replies)}

    async def _run(self) -> None:
        while not self._stopping:
            if not self._count:
                self._active = False
                await self._reads.close()  # the next subscriber starts from new positions
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                await self.read_once()
            except RedisError as exc:  # the feed resumes from its positions once Redis answers again
                log.warning("feed reader: %s; retrying", exc)
                await asyncio.sleep(RETRY_AFTER_ERROR_S)
            except Exception:  # the loop's top level: a bug must not silence every subscriber for good
                log.exception("feed reader failed; retrying")
                await asyncio.sleep(RETRY_AFTER_ERROR_S)

    async def read_once(self) -> int:
        """A blocking read of every partition's log (one ``XREAD``, or one per partition on a cluster);
        dispatch what came. Returns the entries read."""
        streams = {keys.log(p): pos for p, pos in self._positions.items()}
        reply = await self._reads.read(streams, count=self.read_count, block_ms=self._block_ms)
        read = 0
        for stream, entries in reply:
            p = keys.partition_of_key(stream)
            if entries:
                self._positions[p] = text(entries[-1][0])
            read += len(entries)
            self._dispatch(entries)
        self.stats.read += read
        return read

    def _dispatch(self, entries: Entries) -> None:
        for record in records_of(entries):
            try:
                event = record.event()
            except Exception:  # an undecodable entry is skipped here; the projector reports it
                log.warning("feed: cannot decode %s (%s)", record.id, record.type)
                continue
            subs = self._by_tenant.get(event.tenant_id)
            if not subs:
                continue
            message: str | None = None
            pos = position(record.id)
            for sub in list(subs):
                if not sub.wants(event, record.type):
                    continue
                if message is None:
                    message = to_json(event).decode()
                if sub.offer(pos, record.id, message):
                    self.stats.delivered += 1
                else:
                    self.stats.dropped += 1
                    self.unsubscribe(sub)


async def replay(
    redis: Redis, sub: Subscription, since: str, until: str
) -> AsyncIterator[list[tuple[Position, str, str]]]:
    """The subscriber's events after ``since`` up to ``until`` (inclusive), a page of ``XRANGE`` at a time."""
    stream = keys.log(sub.partition)
    start = since
    end = position(until)
    while position(start) < end:
        entries = cast(Entries, await redis.xrange(stream, min=f"({start}", max=until, count=REPLAY_PAGE))
        if not entries:
            return
        page = []
        for record in records_of(entries):
            event = decode(record.body, record.id)
            if sub.wants(event, record.type):
                page.append((position(record.id), record.id, to_json(event).decode()))
        if page:
            yield page
        start = text(entries[-1][0])
        if len(entries) < REPLAY_PAGE:
            return


async def trimmed_after(redis: Redis, sub: Subscription, since: str) -> bool:
    """True when entries after ``since`` may have been removed from the log: a replay could miss events.

    Trimming removes the oldest entries, so that is the case when the log ever lost entries and its first
    remaining one is after ``since`` (conservative: the lost ones may all be older than ``since``), or when an
    entry after ``since`` was deleted.
    """
    try:
        info: dict[str, Any] = await redis.xinfo_stream(keys.log(sub.partition))
    except RedisError:  # no stream yet: nothing was ever removed
        return False
    since_pos = position(since)
    deleted = info.get("max-deleted-entry-id")
    if deleted is not None and position(text(deleted)) > since_pos:
        return True
    removed = int(info.get("entries-added") or 0) > int(info.get("length") or 0)
    first = info.get("first-entry")
    oldest_kept = text(first[0]) if first else text(info.get("last-generated-id")) or "0-0"
    return removed and position(oldest_kept) > since_pos
