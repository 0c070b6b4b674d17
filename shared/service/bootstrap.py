"""The resources a service runs on, opened in order and closed in reverse by the one object that owns them.

Every ``serve()`` (executor, projector, trigger, notifier, API) opens the same things: a Redis client, the
group committer, perhaps a SQL engine with the schema created, the Redis durability check, and the metrics
port. :class:`Service` does it once (arq's ``Worker`` owning its pool is the model)::

    async with Service(settings, stop, sql=True) as service:
        worker = Worker(service.redis, service.engine)
        await service.serve_metrics(worker.metrics)
        await worker.run(stop)

On exit, whatever happened inside, the metrics port closes, the committer flushes, then the engine and the
Redis client close: the committer's last writes still have their client.
"""

from __future__ import annotations

import asyncio
import logging
from types import TracebackType

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.domain import commit_script
from shared.infra.settings import Settings
from shared.log.commit import Committer
from shared.log.durability import ensure_durable
from shared.log.redis import client_for
from shared.readmodel.db import create_engine, create_schema
from shared.service.metrics import Collect, configure_happenings
from shared.service.metrics_port import start_metrics_server

log = logging.getLogger(__name__)


class Service:
    """A service process's Redis client, committer, SQL engine and metrics port.

    ``redis_connections`` sizes the Redis pool (the client's default otherwise); ``committer`` makes the group
    committer; ``sql`` opens an engine on ``ORQ_DATABASE_URL`` and creates or upgrades the schema, with every
    query bounded by ``sql_timeout_s`` when given (the schema is then created on an engine of its own:
    creating tables may take longer than a request may).
    """

    def __init__(
        self,
        settings: Settings,
        stop: asyncio.Event,
        *,
        redis_connections: int | None = None,
        committer: bool = True,
        sql: bool = False,
        sql_timeout_s: float | None = None,
    ) -> None:
        self.settings = settings
        self.stop = stop
        self._redis_connections = redis_connections
        self._want_committer = committer
        self._want_sql = sql
        self._sql_timeout_s = sql_timeout_s
        self._redis: Redis | None = None
        self._committer: Committer | None = None
        self._engine: AsyncEngine | None = None
        self._metrics: asyncio.Task[None] | None = None

    @property
    def redis(self) -> Redis:
        if self._redis is None:
            raise RuntimeError("the service is not open")
        return self._redis

    @property
    def committer(self) -> Committer:
        if self._committer is None:
            raise RuntimeError("this service has no committer (Service(committer=True))")
        return self._committer

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise RuntimeError("this service has no SQL engine (Service(sql=True))")
        return self._engine

    async def __aenter__(self) -> Service:
        try:
            await self._open()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def _open(self) -> None:
        configure_happenings(self.settings.metrics_tenant_label)  # before anything is counted
        if self._redis_connections is None:
            self._redis = client_for(self.settings)
        else:
            self._redis = client_for(self.settings, max_connections=self._redis_connections)
        if self._want_sql:
            self._engine = create_engine(self.settings.database_url, timeout_s=self._sql_timeout_s)
        if self._want_committer:
            self._committer = commit_script.committer(self._redis, wait_replicas=self.settings.redis_wait_replicas)
        await ensure_durable(self._redis, self.settings)
        if self._want_sql:
            await self._create_schema()

    async def _create_schema(self) -> None:
        if self._sql_timeout_s is None:
            await create_schema(self.engine)
            return
        engine = create_engine(self.settings.database_url)
        try:
            await create_schema(engine)
        finally:
            await engine.dispose()

    async def serve_metrics(self, extra: Collect | None = None) -> None:
        """Open the metrics port (``ORQ_METRICS_PORT``; nothing when 0) with the service's own ``extra``
        families; it closes with the service."""
        self._metrics = await start_metrics_server(self.settings, self.stop, self.redis, extra=extra)

    async def close(self) -> None:
        """Close what was opened, in reverse order; safe to call twice."""
        metrics, self._metrics = self._metrics, None
        if metrics is not None:
            metrics.cancel()  # its own end is ``stop``: a service leaving on an error has not set it
            await asyncio.wait({metrics})
        committer, self._committer = self._committer, None
        engine, self._engine = self._engine, None
        redis, self._redis = self._redis, None
        try:
            if committer is not None:
                await committer.close()
        finally:
            try:
                if engine is not None:
                    await engine.dispose()
            finally:
                if redis is not None:
                    await redis.aclose()
