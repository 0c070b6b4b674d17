"""What the streams look like right now: groups, lag, pending, lengths, DLQ size and slots per partition.

The one reader of stream lag: ``orq status`` prints it and ``shared/service/metrics.py`` exports it (``/metrics`` of the
API and of every service's metrics port). Read-only, in two pipelined round trips whatever the partition count
(the second only for lags Redis cannot tell).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from shared.log import keys
from shared.log.redis import node_of, text

# Past this many undelivered entries lag is reported as this number (counting further costs too much).
LAG_COUNT_CAP = 10_000


@dataclass(frozen=True, slots=True)
class GroupStatus:
    """One consumer group on one kind of stream (``work`` sums the partition's ten priority streams)."""

    stream: str
    name: str
    consumers: int
    pending: int
    lag: int
    last_delivered: str


@dataclass(frozen=True, slots=True)
class PartitionStatus:
    """One partition: stream lengths, the log's id range, DLQ size, executions running and waiting, groups."""

    partition: int
    log_length: int
    log_first_id: str
    log_last_id: str
    dlq: int
    work_length: int
    notify_length: int
    groups: list[GroupStatus] = field(default_factory=list)
    running: int = 0  # executions holding an executor slot (the ``running`` hash)
    backlog: int = 0  # executions waiting in the fair-share backlogs (the ``queued`` hash)
    node: str = ""  # host:port of the Redis serving the partition (its slot's master on a cluster)


@dataclass(frozen=True, slots=True)
class _Group:
    """One group on one stream, as ``XINFO GROUPS`` tells it (``lag`` None when Redis cannot tell)."""

    partition: int
    kind: str
    stream: str
    name: str
    consumers: int
    pending: int
    lag: int | None
    last_delivered: str


def _streams(p: int) -> list[tuple[str, str]]:
    """(kind, stream) of every grouped stream of partition ``p``."""
    return [("log", keys.log(p)), *(("work", s) for s in keys.work_streams(p)), ("notify", keys.notify(p))]


def _groups(p: int, kind: str, stream: str, reply: Any) -> list[_Group]:
    if isinstance(reply, ResponseError) or reply is None:  # no such stream yet
        return []
    out = []
    for raw in cast(list[dict[Any, Any]], reply):
        g = {text(k) if isinstance(k, bytes) else k: v for k, v in raw.items()}
        lag = g.get("lag")
        out.append(_Group(p, kind, stream, text(g["name"]), int(g["consumers"]), int(g["pending"]),
                          None if lag is None else int(lag), text(g["last-delivered-id"])))
    return out


def _hash_total(reply: Any) -> int:
    return sum(int(v) for v in cast(list[Any], reply or []) if int(v) > 0)


def _log_info(reply: Any) -> dict[str, Any]:
    if isinstance(reply, ResponseError) or reply is None:
        return {}
    return {text(k) if isinstance(k, bytes) else k: v for k, v in cast(dict[Any, Any], reply).items()}


async def _count_lags(redis: Redis, groups: list[_Group]) -> dict[int, int]:
    """Lag of the groups Redis cannot tell it for (after deletions inside the stream): count what follows
    their last delivered id, up to ``LAG_COUNT_CAP``. Keyed by index in ``groups``."""
    unknown = [(i, g) for i, g in enumerate(groups) if g.lag is None]
    if not unknown:
        return {}
    async with redis.pipeline(transaction=False) as pipe:
        for _, g in unknown:
            pipe.xrange(g.stream, min=f"({g.last_delivered or '0-0'}", max="+", count=LAG_COUNT_CAP)
        replies = await pipe.execute(raise_on_error=False)
    return {i: len(reply) if isinstance(reply, list) else 0 for (i, _), reply in zip(unknown, replies, strict=True)}


def _merge(kind: str, groups: list[tuple[_Group, int]]) -> list[GroupStatus]:
    """The groups of one kind of stream, summed by name (the ten work streams are one ``work`` row)."""
    merged: dict[str, GroupStatus] = {}
    for g, lag in groups:
        if g.kind != kind:
            continue
        seen = merged.get(g.name)
        merged[g.name] = GroupStatus(
            stream=kind,
            name=g.name,
            consumers=max(g.consumers, seen.consumers if seen else 0),
            pending=g.pending + (seen.pending if seen else 0),
            lag=lag + (seen.lag if seen else 0),
            last_delivered=g.last_delivered,
        )
    return sorted(merged.values(), key=lambda s: s.name)


async def partition_status(redis: Redis, partitions: int) -> list[PartitionStatus]:
    """The state of every partition's streams."""
    async with redis.pipeline(transaction=False) as pipe:
        for p in range(partitions):
            pipe.xinfo_stream(keys.log(p))
            pipe.xlen(keys.dlq(p))
            pipe.hvals(keys.running(p))
            pipe.hvals(keys.queued(p))
            for _, stream in _streams(p):
                pipe.xlen(stream)
            for _, stream in _streams(p):
                pipe.xinfo_groups(stream)
        replies = await pipe.execute(raise_on_error=False)
    per_partition = 4 + 2 * len(_streams(0))  # the replies of one partition, in the order asked above
    groups: list[_Group] = []
    for p in range(partitions):
        at = p * per_partition + 4 + len(_streams(p))
        for (kind, stream), reply in zip(_streams(p), replies[at:at + len(_streams(p))], strict=True):
            groups += _groups(p, kind, stream, reply)
    counted = await _count_lags(redis, groups)
    lags = [(g, counted[i] if g.lag is None else g.lag) for i, g in enumerate(groups)]
    out = []
    for p in range(partitions):
        at = p * per_partition
        info = _log_info(replies[at])
        lengths = [0 if isinstance(n, ResponseError) else int(n or 0)
                   for n in replies[at + 4:at + 4 + len(_streams(p))]]
        first = info.get("first-entry")
        mine = [(g, lag) for g, lag in lags if g.partition == p]
        out.append(
            PartitionStatus(
                partition=p,
                log_length=int(info.get("length", 0)),
                log_first_id=text(first[0]) if first else "",
                log_last_id=text(info.get("last-generated-id")) or "0-0",
                dlq=int(replies[at + 1] or 0),
                work_length=sum(lengths[1:-1]),
                notify_length=lengths[-1],
                groups=[*_merge("log", mine), *_merge("work", mine), *_merge("notify", mine)],
                running=_hash_total(replies[at + 2]),
                backlog=_hash_total(replies[at + 3]),
                node=node_of(redis, keys.log(p)),
            )
        )
    return out
