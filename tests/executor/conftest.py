"""Executor fixtures: a committer, and in-process executors on the test Redis, stopped after each test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import replace

import httpx
import pytest
from redis.asyncio import Redis

from services.executor.worker import Executor
from shared.domain import commit_script
from shared.infra.settings import Settings
from shared.log.commit import Committer
from tests.executor.in_process import InProcessExecutors
from tests.executor.seed import PARTITIONS
from tests.helpers import REDIS_URL


@pytest.fixture
async def committer(redis: Redis) -> AsyncIterator[Committer]:
    committer = commit_script.committer(redis)
    yield committer
    await committer.close()


@pytest.fixture
async def start_executor(redis: Redis) -> AsyncIterator[Callable[..., Executor]]:
    executors = InProcessExecutors(redis)

    def start(**overrides: object) -> Executor:
        settings = replace(Settings(redis_url=REDIS_URL, partitions=PARTITIONS), **overrides)  # type: ignore[arg-type]
        return executors.start(settings, httpx.AsyncClient())

    yield start
    await executors.stop_all()
