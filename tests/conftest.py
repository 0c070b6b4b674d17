"""Fixtures for real servers: Redis (a dedicated DB, flushed around each test), SQLite, and MariaDB.

MariaDB tests skip locally with a reason when no server answers; with ``CI=true`` they fail instead.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.infra.settings import Settings
from shared.log.redis import connect
from shared.readmodel.db import create_engine, create_schema
from shared.readmodel.schema import metadata
from tests.helpers import REDIS_URL, mysql_available, mysql_url

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    client = connect(REDIS_URL)
    try:
        await client.ping()
    except Exception as exc:  # pragma: no cover - depends on the machine
        if IN_CI:
            raise
        pytest.skip(f"no Redis at {REDIS_URL}: {exc}")
    await client.flushdb()
    yield client
    await client.flushdb()
    await client.aclose()


@pytest.fixture
def sqlite_url(tmp_path: object) -> str:
    return f"sqlite+aiosqlite:///{tmp_path}/orq.db"


async def _fresh(url: str) -> AsyncEngine:
    engine = create_engine(url)
    async with engine.begin() as conn:
        await conn.run_sync(metadata.drop_all)
    await create_schema(engine)
    return engine


@pytest.fixture(params=["sqlite", pytest.param("mysql", marks=pytest.mark.mysql)])
async def database_url(request: pytest.FixtureRequest, sqlite_url: str) -> AsyncIterator[str]:
    """Each test using this runs on SQLite and on MariaDB (fresh tables)."""
    if request.param == "sqlite":
        url = sqlite_url
    else:
        url = mysql_url()
        if not await mysql_available(url):
            if IN_CI:
                pytest.fail(f"CI=true but no MariaDB answers at {url}")
            pytest.skip(f"no MariaDB at {url} (set ORQ_TEST_MYSQL_URL); MySQL-only tests skipped")
    engine = await _fresh(url)
    await engine.dispose()
    yield url


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    yield engine
    await engine.dispose()


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(
        redis_url=REDIS_URL,
        database_url=database_url,
        admin_token="test-admin-" + uuid.uuid4().hex,
        partitions=4,
        executor_concurrency=5,
        lease_s=30.0,
    )
