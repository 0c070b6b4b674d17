"""API tests run the real app (httpx ASGITransport) on the real Redis and SQL of the shared fixtures."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette

from services.api.app import create_app
from shared.infra.settings import Settings
from shared.log.commit import Committer
from shared.log.redis import connect
from tests.api.support import TenantHandle, create_tenant
from tests.helpers import REDIS_URL


@pytest.fixture
async def api_redis(redis: Redis) -> AsyncIterator[Redis]:
    """The client ``orq api`` makes (a pool that waits when busy), on the test database ``redis`` flushes."""
    client = connect(REDIS_URL)
    yield client
    await client.aclose()


@pytest.fixture
async def app(settings: Settings, api_redis: Redis, engine: AsyncEngine) -> AsyncIterator[Starlette]:
    app = create_app(settings, api_redis, engine)
    yield app
    await app.state.api.committer.close()


@pytest.fixture
async def client(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://orq.test") as client:
        yield client


@pytest.fixture
def committer(app: Starlette) -> Committer:
    """The app's own committer, for tests that set execution state the way the executor would."""
    c: Committer = app.state.api.committer
    return c


@pytest.fixture
async def tenant(client: httpx.AsyncClient, settings: Settings) -> TenantHandle:
    return await create_tenant(client, settings, plan="pro", name="acme")


@pytest.fixture
async def other_tenant(client: httpx.AsyncClient, settings: Settings) -> TenantHandle:
    return await create_tenant(client, settings, plan="pro", name="globex")
