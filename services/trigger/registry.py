"""The live triggers of one type, read from the per-partition indexes that saves and deletes keep."""

from __future__ import annotations

from typing import TypeVar

import msgspec
from redis.asyncio import Redis

from shared.domain.triggers.definitions import CONFIG_TYPES, Config, TriggerState, read_triggers
from shared.log import keys
from shared.log.redis import text

C = TypeVar("C", bound=Config)


async def live_triggers(redis: Redis, partitions: int, trigger_type: str) -> list[TriggerState]:
    """Every enabled, undeleted trigger of ``trigger_type``, all partitions (a pipelined read per partition)."""
    out: list[TriggerState] = []
    for p in range(partitions):
        ids = [text(i) for i in await redis.hkeys(keys.triggers_of_type(p, trigger_type))]
        if ids:
            out += [t for t in await read_triggers(redis, p, sorted(ids)) if t.live and t.type == trigger_type]
    return out


def config_of(trigger: TriggerState, kind: type[C]) -> C | None:
    """The trigger's stored config as ``kind`` (None if it does not fit: a trigger saved by another version)."""
    if CONFIG_TYPES.get(trigger.type) is not kind:
        return None
    try:
        return msgspec.convert(trigger.config, kind)
    except msgspec.ValidationError:
        return None
