"""Pinned workflow definitions, decoded once per process.

A saved workflow version is written once under ``orq:{p}:wfdef:<id>:<version>`` and never rewritten (a save
makes the next version; ids are never reused), so a decoded definition can be kept for as long as the
process lives. The cache is bounded (:class:`shared.infra.lru.LRU`): the least recently used definitions are
dropped first, and one dropped is only read again from Redis.
"""

from __future__ import annotations

from redis.asyncio import Redis

from shared.domain.aggregates import decode_definition
from shared.infra.lru import LRU
from shared.log import keys
from shared.log.workflows import WorkflowDef

# Definitions kept decoded per cache. A definition is at most the request body limit but typically a few KB,
# so ~2,000 is a few MB per process, and it covers the workflows a busy process runs in one stretch (a miss
# costs one GET).
PINNED_CACHE_SIZE = 2048


class PinnedDefinitions:
    """Decoded definitions by their version key, least recently used dropped past ``size``."""

    def __init__(self, size: int = PINNED_CACHE_SIZE) -> None:
        self._items: LRU[str, WorkflowDef] = LRU(size)

    def __len__(self) -> int:
        return len(self._items)

    def decoded(self, def_key: str, body: bytes) -> WorkflowDef | None:
        """The definition stored under ``def_key`` whose raw ``body`` the caller already has (b"" if none)."""
        found = self._items.get(def_key)
        if found is not None or not body:
            return found
        return self._items.put(def_key, decode_definition(body))

    async def read(self, redis: Redis, p: int, workflow_id: str, version: int) -> WorkflowDef | None:
        """The definition of ``version`` of a workflow, read from Redis on a miss; None if it is not there."""
        return await self.read_key(redis, keys.workflow_version(p, workflow_id, version))

    async def read_key(self, redis: Redis, def_key: str) -> WorkflowDef | None:
        """The definition stored under ``def_key``, read from Redis on a miss; None if it is not there."""
        found = self._items.get(def_key)
        if found is not None:
            return found
        raw = await redis.get(def_key)
        if raw is None:
            return None
        return self._items.put(def_key, decode_definition(raw if isinstance(raw, bytes) else raw.encode()))
