"""Robot tasks whose robot went silent: offered again (shared/domain/robots/tasks.py).

Every executor scans every partition's ``task_leases`` about once a second; two executors re-offering the
same task cannot both succeed (the unit is guarded by the lease it observed), so the scan needs no lock.
"""

from __future__ import annotations

import logging

from redis.asyncio import Redis

from shared.domain.executions.pinned import PinnedDefinitions
from shared.domain.robots import tasks as robot_tasks
from shared.infra.clock import now_ms
from shared.infra.settings import Settings
from shared.log import keys
from shared.log.commit import Applied, Committer

log = logging.getLogger(__name__)


class RobotLeases:
    def __init__(self, redis: Redis, committer: Committer, definitions: PinnedDefinitions, settings: Settings) -> None:
        self.redis = redis
        self.committer = committer
        self.definitions = definitions
        self.partitions = range(settings.partitions)
        self.max_crashes = settings.max_crashes

    async def reoffer_expired(self) -> None:
        for p in self.partitions:
            now = now_ms()
            for task_id in await robot_tasks.expired_tasks(self.redis, p, now):
                await self._reoffer(p, task_id, now)

    async def _reoffer(self, p: int, task_id: str, now: int) -> None:
        view = await robot_tasks.read_task(self.redis, p, task_id)
        if not view.task or view.execution.task != task_id:
            # Its execution moved on without it (the task's own clean-up removes it; this is a leftover).
            await self.redis.zrem(keys.task_leases(p), task_id)
            return
        definition = await self.definitions.read_key(self.redis, view.execution.def_key)
        if definition is None:
            return
        unit = robot_tasks.reoffer_unit(view, definition, now_ms=now, max_crashes=self.max_crashes)
        if isinstance(await self.committer.commit(unit), Applied):
            log.warning("robot %s went silent on task %s; offered again", view.task.get(b"robot", b"?").decode(),
                        task_id, extra={"execution_id": view.execution_id})
