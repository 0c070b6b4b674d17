"""Executor fixtures: a committer, and in-process executors on the test Redis, stopped after each test."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

import httpx
import pytest
from redis.asyncio import Redis

from services.executor.worker import Executor
from shared.action_runtime import Actions
from shared.commit import Committer
from shared.settings import Settings
from tests.executor.seed import PARTITIONS
from tests.helpers import REDIS_URL


@pytest.fixture
async def committer(redis: Redis) -> AsyncIterator[Committer]:
    committer = Committer(redis)
    yield committer
    await committer.close()


@pytest.fixture
async def start_executor(redis: Redis) -> AsyncIterator[Callable[..., Executor]]:
    stops: list[tuple[asyncio.Event, asyncio.Task[None], httpx.AsyncClient, Committer]] = []

    def start(**overrides: object) -> Executor:
        settings = replace(Settings(redis_url=REDIS_URL, partitions=PARTITIONS), **overrides)  # type: ignore[arg-type]
        client = httpx.AsyncClient()
        committer = Committer(redis)
        executor = Executor(settings, redis, committer, Actions(client, plugins={}))
        stop = asyncio.Event()
        stops.append((stop, asyncio.create_task(executor.run(stop)), client, committer))
        return executor

    yield start
    for stop, task, client, committer in stops:
        stop.set()
        await task
        await committer.close()
        await client.aclose()
