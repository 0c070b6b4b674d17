"""Hardening fixtures: the real API app (in process, httpx ASGI transport) and real executors, on the test
Redis and a SQLite file, with the settings each test needs (private networks open or closed)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace

import httpx
import pytest
from redis.asyncio import Redis

from services.api.app import create_app
from services.executor.worker import Executor
from shared.infra.settings import Settings
from shared.log.commit import Committer
from shared.log.redis import connect
from shared.readmodel.db import create_engine, create_schema
from tests.api.support import TenantHandle, create_tenant
from tests.executor.in_process import InProcessExecutors
from tests.helpers import REDIS_URL, free_port, until_answering

Api = tuple[httpx.AsyncClient, Settings]


@pytest.fixture
def base_settings(sqlite_url: str) -> Settings:
    return Settings(redis_url=REDIS_URL, database_url=sqlite_url, admin_token="hardening-" + uuid.uuid4().hex,
                    partitions=4, executor_concurrency=5)


@pytest.fixture
async def make_api(redis: Redis, base_settings: Settings) -> AsyncIterator[Callable[..., asyncio.Future[Api]]]:
    """``await make_api(**settings_overrides)`` → (client, settings) of a fresh app; closed after the test."""
    opened: list[tuple[httpx.AsyncClient, Redis, Committer]] = []
    engine = create_engine(base_settings.database_url)
    await create_schema(engine)

    async def make(**overrides: object) -> Api:
        settings = replace(base_settings, **overrides)  # type: ignore[arg-type]
        api_redis = connect(REDIS_URL)
        app = create_app(settings, api_redis, engine)
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://orq.test")
        opened.append((client, api_redis, app.state.api.committer))
        return client, settings

    yield make  # type: ignore[misc]
    for client, api_redis, committer in opened:
        await client.aclose()
        await committer.close()
        await api_redis.aclose()
    await engine.dispose()


@pytest.fixture
async def api(make_api: Callable[..., asyncio.Future[Api]]) -> Api:
    return await make_api()


@pytest.fixture
async def tenant(api: Api) -> TenantHandle:
    client, settings = api
    return await create_tenant(client, settings, plan="enterprise", name="hardening")


@pytest.fixture
async def start_executor(redis: Redis, base_settings: Settings) -> AsyncIterator[Callable[..., Executor]]:
    """``start_executor(allow_private=...)``: an executor in this process, stopped after the test."""
    executors = InProcessExecutors(redis)

    def start(*, allow_private: bool = False) -> Executor:
        return executors.start(base_settings, httpx.AsyncClient(follow_redirects=False), allow_private=allow_private)

    yield start
    await executors.stop_all()


@dataclass(frozen=True)
class Served:
    """``orq api``'s own ``serve()`` running in this process on a free port."""

    host: str
    port: int
    settings: Settings

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"


@asynccontextmanager
async def running_api(settings: Settings) -> AsyncIterator[Served]:
    """``orq api``'s own ``serve()`` in this process on a free port, until the block ends."""
    from services.api.server import serve

    port = free_port()
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, stop, "127.0.0.1", port))
    await until_answering(f"http://127.0.0.1:{port}/healthz", task, timeout=20, message="api listening")
    try:
        yield Served("127.0.0.1", port, settings)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


@pytest.fixture
async def served(redis: Redis, base_settings: Settings) -> AsyncIterator[Served]:
    async with running_api(base_settings) as api:
        yield api
