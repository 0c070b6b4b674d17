"""Redis clients and consumer-group set-up."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, cast

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import NoScriptError, ResponseError

# Blocking reads wait at most this long; the socket timeout must exceed it or a quiet loop dies of a timeout.
BLOCK_MS = 2_000
SOCKET_TIMEOUT_S = BLOCK_MS / 1000 + 10


POOL_WAIT_S = 10


def connect(url: str, *, max_connections: int = 64) -> Redis:
    """A client for commands and blocking reads alike (socket timeout longer than any BLOCK we use).

    A burst larger than the pool waits up to ``POOL_WAIT_S`` for a connection instead of failing with
    "Too many connections".
    """
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=POOL_WAIT_S,
        socket_timeout=SOCKET_TIMEOUT_S,
        socket_connect_timeout=5,
        health_check_interval=30,
        decode_responses=False,
    )
    return Redis.from_pool(pool)


async def ensure_groups(redis: Redis, streams: Iterable[str], group: str, start_id: str = "0") -> None:
    """Create ``group`` on each stream (and the stream) unless it exists; safe to run on every start."""
    async with redis.pipeline(transaction=False) as pipe:
        for stream in streams:
            pipe.xgroup_create(stream, group, id=start_id, mkstream=True)
        replies = await pipe.execute(raise_on_error=False)
    for reply in replies:
        if isinstance(reply, ResponseError) and "BUSYGROUP" not in str(reply):
            raise reply


def text(value: bytes | str | None) -> str:
    """Decode a Redis reply value to ``str`` ("" for a missing value)."""
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value


def raw_hash(reply: Mapping[Any, Any]) -> dict[bytes, bytes]:
    """A hash reply (``HGETALL``) with bytes keys and values, whatever the client decoded."""
    return {(k if isinstance(k, bytes) else str(k).encode()): (v if isinstance(v, bytes) else str(v).encode())
            for k, v in reply.items()}


# redis-py's reply types are unions of every protocol's shapes; these wrappers state what we get with
# decode_responses=False, so the rest of the code is typed.
Fields = dict[bytes, bytes]
Entries = list[tuple[bytes, Fields]]


async def read_group(
    redis: Redis, group: str, consumer: str, streams: Mapping[str, str], *, count: int, block_ms: int | None = None
) -> list[tuple[str, Entries]]:
    """``XREADGROUP``: (stream, entries) pairs; an empty list when nothing came within ``block_ms``."""
    reply = await redis.xreadgroup(group, consumer, dict(streams), count=count, block=block_ms)  # type: ignore[arg-type]
    return [(text(stream), cast(Entries, entries)) for stream, entries in cast(list[Any], reply or [])]


async def auto_claim(
    redis: Redis, stream: str, group: str, consumer: str, min_idle_ms: int, cursor: str, *, count: int
) -> tuple[str, Entries]:
    """``XAUTOCLAIM``: the next cursor and the entries claimed (deleted ones left out)."""
    reply: list[Any] = await redis.xautoclaim(stream, group, consumer, min_idle_ms, cursor, count=count)
    return text(reply[0]), cast(Entries, reply[1])


class PipelinedScript:
    """A Lua script run inside pipelines by ``EVALSHA`` alone.

    redis-py's own script objects send ``SCRIPT EXISTS`` before every pipeline that holds them: one more
    round trip on the hottest paths. This one queues ``EVALSHA`` and, only when Redis answers NOSCRIPT (a
    restarted or flushed server), loads the script and runs the pipeline again: nothing ran the first time.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    def queue(self, pipe: Pipeline, keys: Sequence[str], args: Sequence[str | int | float | bytes]) -> None:
        pipe.evalsha(self.sha, len(keys), *keys, *args)

    async def load(self, redis: Redis) -> None:
        await redis.script_load(self.source)


async def run_pipeline(
    redis: Redis, build: Callable[[Pipeline], None], scripts: Sequence[PipelinedScript]
) -> list[Any]:
    """Build and execute a pipeline of script calls; on NOSCRIPT load the scripts and run it once more."""
    for attempt in range(2):
        async with redis.pipeline(transaction=False) as pipe:
            build(pipe)
            try:
                replies: list[Any] = await pipe.execute()
                return replies
            except NoScriptError:
                if attempt:
                    raise
        for script in scripts:
            await script.load(redis)
    raise AssertionError("unreachable")
