"""Redis clients and consumer-group set-up."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, cast

from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.asyncio.client import Pipeline
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import NoScriptError, ResponseError

from shared.infra.settings import Settings
from shared.log import keys

# Blocking reads wait at most this long; the socket timeout must exceed it or a quiet loop dies of a timeout.
BLOCK_MS = 2_000
SOCKET_TIMEOUT_S = BLOCK_MS / 1000 + 10


POOL_WAIT_S = 10
# How long a write waits for ORQ_REDIS_WAIT_REPLICAS replicas before it is refused as not replicated.
REPLICA_WAIT_MS = 2_000
# Retries of a cluster command through a failover (backoff capped at 1 s: ~20 s in all, several node timeouts).
FAILOVER_RETRIES = 24


def connect(url: str, *, max_connections: int = 64, cluster: bool = False) -> Redis:
    """A client for commands and blocking reads alike (socket timeout longer than any BLOCK we use).

    A burst larger than the pool waits up to ``POOL_WAIT_S`` for a connection instead of failing with
    "Too many connections". With ``cluster``, ``url`` is a seed node of a Redis Cluster and the client is
    redis-py's cluster client (``max_connections`` per node): it follows MOVED and ASK, retries TRYAGAIN and
    finds a promoted replica after a failover. It is typed as ``Redis``: it answers the same command methods,
    and nothing here sends a command that spans two slots (DESIGN §13; see ``StreamReads``).
    """
    if cluster:
        return cast(Redis, RedisCluster.from_url(
            url,
            max_connections=max_connections,
            socket_timeout=SOCKET_TIMEOUT_S,
            socket_connect_timeout=5,
            decode_responses=False,
            # A failover takes the cluster a few node timeouts: keep retrying through it (each retry refreshes
            # the slot map) rather than failing the command.
            retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), FAILOVER_RETRIES),
        ))
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


def client_for(settings: Settings, *, max_connections: int = 64) -> Redis:
    """The deployment's Redis client, and its partitions' hash tags chosen for it (see ``keys.configure``)."""
    keys.configure(partitions=settings.partitions, cluster=settings.redis_cluster)
    return connect(settings.redis_url, max_connections=max_connections, cluster=settings.redis_cluster)


def is_cluster(redis: Redis) -> bool:
    return isinstance(redis, RedisCluster)


def node_of(redis: Redis, key: str) -> str:
    """``host:port`` of the Redis that serves ``key`` (its slot's master on a cluster)."""
    if is_cluster(redis):
        node = cast(RedisCluster, redis).get_node_from_key(key)
        return node.name if node is not None else "?"
    options = redis.connection_pool.connection_kwargs
    return f"{options.get('host', '?')}:{options.get('port', '?')}"


def queue_replica_wait(pipe: Pipeline, redis: Redis, written: Iterable[str], replicas: int) -> list[str]:
    """After the writes queued in ``pipe`` to the keys ``written``, queue one ``WAIT replicas`` per master that
    holds them, on the connection that wrote (WAIT covers that connection's writes). Returns the masters
    (``node_of``) in the order their WAITs were queued: the pipeline's last replies, each a count of replicas."""
    if not replicas:
        return []
    if not is_cluster(redis):
        pipe.execute_command("WAIT", replicas, REPLICA_WAIT_MS)
        return [node_of(redis, next(iter(written)))]
    cluster = cast(RedisCluster, redis)
    nodes = {node.name: node for node in (cluster.get_node_from_key(key) for key in written) if node is not None}
    for node in nodes.values():
        pipe.execute_command("WAIT", replicas, REPLICA_WAIT_MS, target_nodes=node)
    return list(nodes)


async def replicas_after_probe(redis: Redis, key: str, replicas: int) -> int:
    """Write ``key`` (a marker of the slot's own) and ``WAIT`` on the same connection: how many replicas have
    everything its master wrote up to now, earlier writes of other connections included (replicas
    acknowledge a position in the master's one replication stream)."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.set(key, b"1", px=60_000)
        pipe.execute_command("WAIT", replicas, REPLICA_WAIT_MS, **_route(redis, key))
        _, confirmed = await pipe.execute()
    return int(confirmed)


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
    return await _read(redis, ["XREADGROUP", "GROUP", group, consumer], streams, count, block_ms)


async def read_streams(
    redis: Redis, streams: Mapping[str, str], *, count: int, block_ms: int | None = None
) -> list[tuple[str, Entries]]:
    """``XREAD``: (stream, entries) pairs after each stream's position; empty when nothing came in ``block_ms``."""
    return await _read(redis, ["XREAD"], streams, count, block_ms)


async def _read(redis: Redis, command: list[str], streams: Mapping[str, str], count: int, block_ms: int | None
                ) -> list[tuple[str, Entries]]:
    args: list[str | int] = [*command, "COUNT", count]
    if block_ms is not None:
        args += ["BLOCK", block_ms]
    args += ["STREAMS", *streams.keys(), *streams.values()]
    reply = await redis.execute_command(*args, **_route(redis, next(iter(streams))))  # type: ignore[no-untyped-call]
    return [(text(stream), cast(Entries, entries)) for stream, entries in cast(list[Any], reply or [])]


def _route(redis: Redis, key: str) -> dict[str, Any]:
    """On a cluster, the node serving ``key`` named up front for a stream read. XREAD and XREADGROUP have
    "movable keys": left to itself, redis-py's cluster client asks one fixed node (``COMMAND GETKEYS``) where
    their keys are, and after that node dies in a failover every read fails until something else makes the
    client rebuild its view. Named, the read goes by the slot map, follows MOVED and ASK, and a dead node
    makes the client rebuild the map."""
    if not is_cluster(redis):
        return {}
    node = cast(RedisCluster, redis).get_node_from_key(key)
    return {} if node is None else {"target_nodes": node}


async def auto_claim(
    redis: Redis, stream: str, group: str, consumer: str, min_idle_ms: int, cursor: str, *, count: int
) -> tuple[str, Entries]:
    """``XAUTOCLAIM``: the next cursor and the entries claimed (deleted ones left out)."""
    reply: list[Any] = await redis.xautoclaim(stream, group, consumer, min_idle_ms, cursor, count=count)
    return text(reply[0]), cast(Entries, reply[1])


def guarded(script_keys: Sequence[str]) -> list[str]:
    """The keys of a script call over one partition, its slot guard last (``keys.slot_guard_of``): every
    partition script is called with these, and the scripts that walk their KEYS leave the last one out."""
    return [*script_keys, keys.slot_guard_of(script_keys[0])]


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
        """Queue a call over one partition's ``keys`` (its slot guard is added last: see ``guarded``)."""
        script_keys = guarded(keys)
        # Through ``execute_command``: redis-py's cluster pipeline blocks its ``evalsha`` method (a script could
        # touch keys of several slots); ours touch one partition's slot, named by the keys given.
        pipe.execute_command("EVALSHA", self.sha, len(script_keys), *script_keys, *args)

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
