"""Executors run in this process (each with its own HTTP client and committer), for fixtures to start and stop."""

from __future__ import annotations

import asyncio

import httpx
from redis.asyncio import Redis

from services.executor.worker import Executor
from shared.domain import commit_script
from shared.domain.actions.runtime import Actions
from shared.infra.settings import Settings
from shared.log.commit import Committer


class InProcessExecutors:
    """The executors a test started on one Redis; :meth:`stop_all` stops them and closes what they opened."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._running: list[tuple[asyncio.Event, asyncio.Task[None], httpx.AsyncClient, Committer]] = []

    def start(self, settings: Settings, client: httpx.AsyncClient, *, allow_private: bool = False) -> Executor:
        """An executor running with ``settings``, its HTTP actions on ``client`` (closed by :meth:`stop_all`)."""
        committer = commit_script.committer(self._redis)
        executor = Executor(settings, self._redis, committer, Actions(client, plugins={}, allow_private=allow_private))
        stop = asyncio.Event()
        self._running.append((stop, asyncio.create_task(executor.run(stop)), client, committer))
        return executor

    async def stop_all(self) -> None:
        """Stop every executor and wait for its run to end, then close its committer and HTTP client."""
        for stop, task, client, committer in self._running:
            stop.set()
            await task
            await committer.close()
            await client.aclose()
