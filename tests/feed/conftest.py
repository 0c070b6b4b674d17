"""The feed runs in a real uvicorn server (WebSockets need a socket), on the shared Redis test database."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
import pytest
import uvicorn
from redis.asyncio import Redis
from starlette.applications import Starlette

from services.api.app import create_app
from shared.domain import commit_script
from shared.infra.settings import Settings
from shared.log.commit import Committer
from shared.log.redis import connect
from shared.readmodel.db import create_engine, create_schema
from tests.api.support import TenantHandle, create_tenant
from tests.helpers import REDIS_URL, assert_eventually, free_port


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling (the test stops it)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass
class LiveApi:
    """One API process' worth: an app with its own feed reader, served on a port."""

    app: Starlette
    base: str
    settings: Settings

    @property
    def ws(self) -> str:
        return self.base.replace("http://", "ws://") + "/ws/events"

    def url(self, token: str | None = None, **params: str) -> str:
        query = dict(params)
        if token is not None:
            query["token"] = token
        return self.ws + ("?" + str(httpx.QueryParams(query)) if query else "")

    async def tenant(self, name: str = "acme", plan: str = "enterprise") -> TenantHandle:
        async with httpx.AsyncClient(base_url=self.base) as client:
            return await create_tenant(client, self.settings, plan=plan, name=name)


@asynccontextmanager
async def serve(
    settings: Settings, *, buffer: int | None = None, read_count: int | None = None
) -> AsyncIterator[LiveApi]:
    redis = connect(settings.redis_url)
    engine = create_engine(settings.database_url)
    await create_schema(engine)
    app = create_app(settings, redis, engine)
    if buffer is not None:
        app.state.api.feed.buffer = buffer
    if read_count is not None:
        app.state.api.feed.read_count = read_count
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on")
    server = _Server(config)
    task = asyncio.create_task(server.serve())
    try:

        async def started() -> bool:
            assert not task.done(), "server died"
            return server.started

        await assert_eventually(started, timeout=15, message="api listening")
        yield LiveApi(app, f"http://127.0.0.1:{port}", settings)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)
        await engine.dispose()
        await redis.aclose()


@pytest.fixture
def feed_settings(sqlite_url: str) -> Settings:
    """The feed reads Redis only (SQL is not involved): one database dialect is enough here."""
    return Settings(redis_url=REDIS_URL, database_url=sqlite_url, admin_token="feed-admin", partitions=4)


@pytest.fixture
async def live(feed_settings: Settings, redis: Redis) -> AsyncIterator[LiveApi]:
    async with serve(feed_settings) as api:
        yield api


@pytest.fixture
async def committer(redis: Redis) -> AsyncIterator[Committer]:
    c = commit_script.committer(redis)
    yield c
    await c.close()
