"""The global limiter (``ORQ_GLOBAL_RATE``): executions started per window across all executors.

Executors reserve tokens from one counter per window before they take work, and give back what they did
not use. The counter lives outside the partitions (one key, its own slot): it is a separate call, taken
only when the limit is on.
"""

from __future__ import annotations

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from shared.log import keys
from shared.log.commit import load_lua


class GlobalRate:
    """Tokens for starting executions: at most ``limit`` per ``window_ms`` over every executor."""

    def __init__(self, redis: Redis, limit: int, window_ms: int) -> None:
        self.redis = redis
        self.limit = limit
        self.window_ms = window_ms
        self._reserve: AsyncScript = redis.register_script(load_lua("services.executor", "global_rate_reserve.lua"))

    def _key(self, now_ms: int) -> str:
        return keys.global_rate(now_ms // self.window_ms)

    async def reserve(self, wanted: int, now_ms: int) -> int:
        """How many of ``wanted`` may start now (0 when the window's budget is spent)."""
        if self.limit <= 0 or wanted <= 0:
            return wanted
        granted = await self._reserve(keys=[self._key(now_ms)], args=[wanted, self.limit, self.window_ms * 2])
        return int(granted)

    async def give_back(self, unused: int, now_ms: int) -> None:
        if self.limit > 0 and unused > 0:
            await self.redis.decrby(self._key(now_ms), unused)
