"""What the streams look like right now: groups, lag, pending, lengths and DLQ size per partition.

Read by ``orq status`` and by the metrics port (``shared/metrics_server.py``). Read-only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from shared import keys
from shared.redis import Entries, text

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
    partition: int
    log_length: int
    log_first_id: str
    log_last_id: str
    dlq: int
    work_length: int
    notify_length: int
    groups: list[GroupStatus] = field(default_factory=list)


async def _groups(redis: Redis, stream: str) -> list[dict[str, Any]]:
    try:
        groups: list[dict[str, Any]] = await redis.xinfo_groups(stream)
    except ResponseError:  # no such stream yet
        return []
    return groups


async def _lag(redis: Redis, stream: str, group: dict[str, Any]) -> int:
    lag = group.get("lag")
    if lag is not None:
        return int(lag)
    # Redis cannot tell after deletions inside the stream: count what follows the last delivered id.
    after = text(group.get("last-delivered-id")) or "0-0"
    return len(cast(Entries, await redis.xrange(stream, f"({after}", "+", count=LAG_COUNT_CAP)))


async def _group_statuses(redis: Redis, kind: str, streams: list[str]) -> list[GroupStatus]:
    merged: dict[str, GroupStatus] = {}
    for stream in streams:
        for group in await _groups(redis, stream):
            name = text(group["name"])
            lag = await _lag(redis, stream, group)
            seen = merged.get(name)
            merged[name] = GroupStatus(
                stream=kind,
                name=name,
                consumers=max(int(group["consumers"]), seen.consumers if seen else 0),
                pending=int(group["pending"]) + (seen.pending if seen else 0),
                lag=lag + (seen.lag if seen else 0),
                last_delivered=text(group["last-delivered-id"]),
            )
    return sorted(merged.values(), key=lambda g: g.name)


async def partition_status(redis: Redis, partitions: int) -> list[PartitionStatus]:
    """The state of every partition's streams."""
    out = []
    for p in range(partitions):
        log_stream = keys.log(p)
        try:
            info = await redis.xinfo_stream(log_stream)
        except ResponseError:
            info = {}
        first = info.get("first-entry")
        async with redis.pipeline(transaction=False) as pipe:
            pipe.xlen(keys.dlq(p))
            for stream in keys.work_streams(p):
                pipe.xlen(stream)
            pipe.xlen(keys.notify(p))
            lengths = [int(n) for n in await pipe.execute()]
        groups = [
            *await _group_statuses(redis, "log", [log_stream]),
            *await _group_statuses(redis, "work", keys.work_streams(p)),
            *await _group_statuses(redis, "notify", [keys.notify(p)]),
        ]
        out.append(
            PartitionStatus(
                partition=p,
                log_length=int(info.get("length", 0)),
                log_first_id=text(first[0]) if first else "",
                log_last_id=text(info.get("last-generated-id")) or "0-0",
                dlq=lengths[0],
                work_length=sum(lengths[1:-1]),
                notify_length=lengths[-1],
                groups=groups,
            )
        )
    return out
