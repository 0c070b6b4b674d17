"""The commit script the services run: commit.lua's generic ops plus the domain op libraries.

``shared/log/commit.py`` knows no domain; the op kinds of executions (``shared/domain/executions/ops.py``) and
of work-queue items (``shared/domain/queues/items.py``, ``claims.py``) are Lua libraries composed in here.
"""

from __future__ import annotations

from redis.asyncio import Redis

from shared.log.commit import Committer, load_lua

COMMIT_LIBRARIES: tuple[str, ...] = (
    load_lua("shared.domain.executions", "commit_ops_executions.lua"),
    load_lua("shared.domain.queues", "commit_ops_queues.lua"),
)


def committer(redis: Redis, *, wait_replicas: int = 0, max_batch: int = 512) -> Committer:
    """A :class:`Committer` that knows every op kind the services build."""
    return Committer(redis, max_batch, wait_replicas=wait_replicas, libraries=COMMIT_LIBRARIES)
