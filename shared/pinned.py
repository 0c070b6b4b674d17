"""Pinned workflow definitions, decoded once per process.

A saved workflow version is written once under ``orq:{p}:wfdef:<id>:<version>`` and never rewritten (a save
makes the next version; ids are never reused), so a decoded definition can be kept for as long as the
process lives. The cache is bounded: the least recently used definitions are dropped first.
"""

from __future__ import annotations

from collections import OrderedDict

from redis.asyncio import Redis

from shared import keys
from shared.state import decode_definition
from shared.workflows import WorkflowDef


class PinnedDefinitions:
    """Decoded definitions by their version key, least recently used dropped past ``size``."""

    def __init__(self, size: int = 2048) -> None:
        self._size = size
        self._items: OrderedDict[str, WorkflowDef] = OrderedDict()

    def decoded(self, def_key: str, body: bytes) -> WorkflowDef | None:
        """The definition stored under ``def_key`` whose raw ``body`` the caller already has (b"" if none)."""
        found = self._get(def_key)
        if found is not None or not body:
            return found
        return self._put(def_key, decode_definition(body))

    async def read(self, redis: Redis, p: int, workflow_id: str, version: int) -> WorkflowDef | None:
        """The definition of ``version`` of a workflow, read from Redis on a miss; None if it is not there."""
        def_key = keys.workflow_version(p, workflow_id, version)
        found = self._get(def_key)
        if found is not None:
            return found
        raw = await redis.get(def_key)
        if raw is None:
            return None
        return self._put(def_key, decode_definition(raw if isinstance(raw, bytes) else raw.encode()))

    def _get(self, def_key: str) -> WorkflowDef | None:
        found = self._items.get(def_key)
        if found is not None:
            self._items.move_to_end(def_key)
        return found

    def _put(self, def_key: str, definition: WorkflowDef) -> WorkflowDef:
        self._items[def_key] = definition
        if len(self._items) > self._size:
            self._items.popitem(last=False)
        return definition
