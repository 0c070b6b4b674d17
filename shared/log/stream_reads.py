"""Blocking reads over one stream per partition, on a single Redis and on a Redis Cluster alike.

On one Redis a single ``XREAD``/``XREADGROUP ... BLOCK`` covers every partition's stream. A cluster refuses
that (``CROSSSLOT``: each partition is its own hash slot), so there each stream gets its own blocking read,
all in flight at once, and a call returns as soon as any of them answers. The reads still waiting stay in
flight for the next call instead of being cancelled: cancelling an ``XREADGROUP`` in flight could lose the
entries Redis hands it meanwhile to this consumer's pending list until a reclaim.

Connections: on a cluster one reader holds one connection per stream it reads (a partition count, fixed for
the deployment) while its reads wait; on one Redis, one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from contextlib import suppress

from redis.asyncio import Redis

from shared.log.redis import Entries, is_cluster, read_group, read_streams

log = logging.getLogger(__name__)

Batches = list[tuple[str, Entries]]


class StreamReads:
    """Reads ``XREAD`` style (``group`` None: positions are entry ids) or as ``consumer`` of ``group``."""

    def __init__(self, redis: Redis, *, group: str | None = None, consumer: str = "") -> None:
        self._redis = redis
        self._group = group
        self._consumer = consumer
        self._in_flight: dict[str, asyncio.Task[Batches]] = {}

    async def read(self, streams: Mapping[str, str], *, count: int, block_ms: int | None) -> Batches:
        """Entries after each stream's position (``>`` for a group's new ones): what came within ``block_ms``
        (None: do not wait), as (stream, entries) pairs. A stream whose read is still in flight from an
        earlier call keeps the position it was read from."""
        if not is_cluster(self._redis) or len(streams) == 1 and not self._in_flight:
            return await self._one_call(dict(streams), count, block_ms)
        for stream, position in streams.items():
            if stream not in self._in_flight:
                self._in_flight[stream] = asyncio.create_task(
                    self._one_call({stream: position}, count, block_ms), name=f"read {stream}")
        tasks = set(self._in_flight.values())
        await asyncio.wait(tasks, return_when=asyncio.ALL_COMPLETED if block_ms is None else asyncio.FIRST_COMPLETED)
        batches: Batches = []
        failure: BaseException | None = None
        for stream, task in list(self._in_flight.items()):
            if not task.done():
                continue
            del self._in_flight[stream]
            if task.exception() is not None:
                failure = failure or task.exception()
                continue
            batches += task.result()
        if failure is not None:
            if not batches:
                raise failure
            # What other streams answered must reach the caller (a group's entries are now pending on it);
            # the failed stream is read again by the next call.
            log.warning("reading a stream failed: %s", failure)
        return batches

    async def close(self) -> None:
        """Stop the reads in flight (a group's entries they were handed meanwhile wait in this consumer's
        pending list: read again on its restart, or reclaimed by another consumer)."""
        tasks, self._in_flight = list(self._in_flight.values()), {}
        for task in tasks:
            task.cancel()
        for task in tasks:
            with suppress(BaseException):
                await task

    async def _one_call(self, streams: dict[str, str], count: int, block_ms: int | None) -> Batches:
        if self._group is None:
            return await read_streams(self._redis, streams, count=count, block_ms=block_ms)
        return await read_group(self._redis, self._group, self._consumer, streams, count=count, block_ms=block_ms)
