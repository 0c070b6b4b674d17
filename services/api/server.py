"""``orq api``: the HTTP API under uvicorn, until ``stop`` is set."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

import uvicorn
from redis.asyncio import BlockingConnectionPool, Redis

from services.api.app import create_app
from shared.commit import Committer
from shared.db import create_engine, create_schema
from shared.redis import SOCKET_TIMEOUT_S
from shared.settings import Settings

log = logging.getLogger(__name__)

GRACEFUL_SHUTDOWN_S = 10
REDIS_CONNECTIONS = 64
# A request waits this long for a free Redis connection before it is answered 503.
REDIS_POOL_WAIT_S = 10.0


def connect_redis(url: str, *, max_connections: int = REDIS_CONNECTIONS) -> Redis:
    """The API's Redis client: like :func:`shared.redis.connect`, but a burst of requests larger than the
    pool waits for a connection instead of failing ("Too many connections")."""
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=REDIS_POOL_WAIT_S,
        socket_timeout=SOCKET_TIMEOUT_S,
        socket_connect_timeout=5,
        health_check_interval=30,
        decode_responses=False,
    )
    return Redis.from_pool(pool)


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the caller's ``stop`` event is the one way to stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve(settings: Settings, stop: asyncio.Event, host: str, port: int) -> None:
    """Serve until ``stop`` is set; then stop accepting, let in-flight requests finish, and flush commits."""
    redis = connect_redis(settings.redis_url)
    engine = create_engine(settings.database_url)
    committer = Committer(redis)
    try:
        await create_schema(engine)
        app = create_app(settings, redis, engine, committer=committer)
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_config=None,
            lifespan="on",
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
            server_header=False,
        )
        server = _Server(config)
        serving = asyncio.create_task(server.serve(), name="uvicorn")
        stopping = asyncio.create_task(stop.wait(), name="api-stop")
        await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
        server.should_exit = True
        stopping.cancel()
        await serving
    finally:
        await committer.close()
        await engine.dispose()
        await redis.aclose()
        log.info("api stopped")
