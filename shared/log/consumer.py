"""The one consumer loop: read a group, handle, ack after success, reclaim from dead consumers, drain on stop.

Services write handlers; this module owns the stream mechanics. A handler receives the entries of one
stream in order and must be idempotent: an entry is acked only after the handler returns, so a crash in
between redelivers it (to this consumer's pending list on restart, or to another consumer by reclaim).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisClusterException, RedisError

from shared.log.events import Event, decode
from shared.log.redis import BLOCK_MS, Entries, auto_claim, ensure_groups, read_group
from shared.log.stream_reads import StreamReads

log = logging.getLogger(__name__)

PAUSE_AFTER_ERROR_S = 1.0


@dataclass(frozen=True, slots=True)
class Record:
    """One stream entry: its id, its type name and its msgpack body."""

    id: str
    type: str
    body: bytes

    def event(self) -> Event:
        return decode(self.body, self.id)


Handler = Callable[[str, Sequence[Record]], Awaitable[None]]


def records_of(entries: Entries) -> list[Record]:
    """Stream entries (as redis-py returns them) to records; entries already deleted come back empty."""
    out = []
    for entry_id, fields in entries:
        if fields:
            out.append(Record(entry_id.decode(), fields.get(b"t", b"").decode(), fields.get(b"d", b"")))
    return out


class StreamConsumer:
    """Consume ``streams`` as ``consumer`` of ``group``, calling ``handler`` per stream batch."""

    def __init__(
        self,
        redis: Redis,
        *,
        group: str,
        consumer: str,
        streams: Sequence[str],
        handler: Handler,
        count: int = 500,
        block_ms: int = BLOCK_MS,
        reclaim_idle_ms: int = 60_000,
    ) -> None:
        self.redis = redis
        self.group = group
        self.consumer = consumer
        self.streams = list(streams)
        self.handler = handler
        self.count = count
        self.block_ms = block_ms
        self.reclaim_idle_ms = reclaim_idle_ms
        self._next_reclaim = 0.0
        self._reads = StreamReads(redis, group=group, consumer=consumer)

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set; the batch in hand is finished and acked before returning."""
        await ensure_groups(self.redis, self.streams, self.group)
        await self._drain_own_pending()
        try:
            while not stop.is_set():
                try:
                    if time.monotonic() >= self._next_reclaim:
                        await self._reclaim_from_dead_consumers()
                    await self.read_once(block_ms=self.block_ms)
                except (RedisError, RedisClusterException) as exc:
                    # Redis away for a moment (a restart, a failover): what was not acked is read again.
                    log.warning("%s on %s: %s; reading again in %ss", self.group, self.consumer, exc,
                                PAUSE_AFTER_ERROR_S)
                    await asyncio.sleep(PAUSE_AFTER_ERROR_S)
        finally:
            await self._reads.close()

    async def read_once(self, block_ms: int | None = None) -> int:
        """Read and handle one batch of new entries; returns how many were handled."""
        reply = await self._reads.read({s: ">" for s in self.streams}, count=self.count, block_ms=block_ms)
        handled = 0
        for stream, entries in reply:
            handled += await self._handle(stream, records_of(entries), entries)
        return handled

    async def _handle(self, stream: str, records: list[Record], entries: Entries) -> int:
        if records:
            await self.handler(stream, records)
        ids = [entry_id for entry_id, _ in entries]
        if ids:
            await self.redis.xack(stream, self.group, *ids)
        return len(records)

    async def _drain_own_pending(self) -> None:
        """Entries delivered to this consumer name before a restart, not yet acked: handle them first."""
        for stream in self.streams:
            while True:
                reply = await read_group(self.redis, self.group, self.consumer, {stream: "0"}, count=self.count)
                entries = reply[0][1] if reply else []
                if not entries:
                    break
                await self._handle(stream, records_of(entries), entries)

    async def _reclaim_from_dead_consumers(self) -> None:
        self._next_reclaim = time.monotonic() + self.reclaim_idle_ms / 3000
        for stream in self.streams:
            cursor = "0-0"
            while True:
                cursor, entries = await auto_claim(
                    self.redis, stream, self.group, self.consumer, self.reclaim_idle_ms, cursor, count=self.count
                )
                if entries:
                    log.warning("reclaimed %d entries of %s from a dead consumer", len(entries), stream)
                    await self._handle(stream, records_of(entries), entries)
                if cursor == "0-0":
                    break
