"""``shared/service/bootstrap.py``: a service's resources open in order and close with it, whatever happens inside."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy import inspect

from shared.infra.settings import Settings
from shared.log import keys
from shared.log.commit import Applied, Unit
from shared.readmodel.schema import metadata
from shared.service.bootstrap import Service
from shared.service.metrics import counter
from tests.helpers import REDIS_URL, free_port

MARK = f"{keys.tag(1)}:bootstrap-test"


def _settings(database_url: str = "", metrics_port: int = 0) -> Settings:
    return Settings(redis_url=REDIS_URL, database_url=database_url or "sqlite+aiosqlite:///:memory:",
                    partitions=2, metrics_port=metrics_port)


async def test_a_service_opens_redis_sql_and_the_metrics_port_and_closes_them(redis: Redis, sqlite_url: str) -> None:
    settings = _settings(sqlite_url, free_port())
    base = f"http://127.0.0.1:{settings.metrics_port}"
    async with Service(settings, asyncio.Event(), sql=True) as service:
        assert await service.redis.ping()
        async with service.engine.connect() as conn:  # the schema was created on the way in
            tables = await conn.run_sync(lambda sync: set(inspect(sync).get_table_names()))
        assert {table.name for table in metadata.sorted_tables} <= tables
        await service.serve_metrics(lambda: [counter("orq_bootstrap_test_total", "t", 3)])
        async with httpx.AsyncClient(base_url=base) as client:
            text = (await client.get("/metrics")).text
        assert "orq_bootstrap_test_total 3.0" in text
        # A commit handed over just before leaving is flushed by the exit, before Redis closes.
        pending = service.committer.submit(Unit(1).set(MARK, b"mine", 60))
    assert isinstance(pending.result(), Applied)
    assert await redis.get(MARK) == b"mine"
    # ``stop`` was never set: the metrics port closed with the service all the same.
    async with httpx.AsyncClient(base_url=base) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get("/metrics")


async def test_a_failing_service_still_closes_its_metrics_port(redis: Redis) -> None:
    settings = _settings(metrics_port=free_port())
    with pytest.raises(RuntimeError, match="boom"):
        async with Service(settings, asyncio.Event(), committer=False) as service:
            await service.serve_metrics()
            raise RuntimeError("boom")
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.metrics_port}") as client:
        with pytest.raises(httpx.ConnectError):
            await client.get("/healthz")


async def test_only_what_was_asked_for_is_opened(redis: Redis) -> None:
    async with Service(_settings(), asyncio.Event(), committer=False) as service:
        with pytest.raises(RuntimeError, match="no SQL engine"):
            service.engine  # noqa: B018 - the property is the check
        with pytest.raises(RuntimeError, match="no committer"):
            service.committer  # noqa: B018
