"""``orq api``: the HTTP API under uvicorn, until ``stop`` is set.

uvicorn runs with the transport limits of ``services/api/transport.py`` (request head size, stalled
clients) and the API's SQL engine bounds every query by ``ORQ_SQL_TIMEOUT_S``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

import uvicorn

from services.api.app import create_app
from services.api.transport import GuardedHttpTools, HeadLimit
from shared.bootstrap import Service
from shared.settings import Settings

log = logging.getLogger(__name__)

GRACEFUL_SHUTDOWN_S = 10


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the caller's ``stop`` event is the one way to stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve(settings: Settings, stop: asyncio.Event, host: str, port: int) -> None:
    """Serve until ``stop`` is set; then stop accepting, let in-flight requests finish, and flush commits."""
    try:
        async with Service(settings, stop, sql=True, sql_timeout_s=settings.sql_timeout_s) as service:
            app = create_app(settings, service.redis, service.engine, committer=service.committer)
            config = uvicorn.Config(
                HeadLimit(app),
                host=host,
                port=port,
                http=GuardedHttpTools,
                log_config=None,
                lifespan="on",
                timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
                server_header=False,
            )
            server = _Server(config)
            serving = asyncio.create_task(server.serve(), name="uvicorn")
            stopping = asyncio.create_task(stop.wait(), name="api-stop")
            await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
            app.state.api.offers.shut()  # open robot long polls answer 204 now rather than being cut off
            server.should_exit = True
            stopping.cancel()
            await serving
    finally:
        log.info("api stopped")
