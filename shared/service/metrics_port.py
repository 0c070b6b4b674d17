"""A tiny HTTP port serving Prometheus text (``ORQ_METRICS_PORT``) for services without an HTTP API.

The executor, projector, trigger and notifier open it through ``shared/service/bootstrap.py``; it is off by default
(port 0). It serves ``GET /metrics`` (the exporter of ``shared/service/metrics.py``: the deployment's stream families
read from Redis, the same on every instance, the process collectors, plus what the service itself counts) and
``GET /healthz``.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import suppress

from redis.asyncio import Redis

from shared.infra.settings import Settings
from shared.service.metrics import CONTENT_TYPE, Collect, Exporter, StreamMetrics, gauge

log = logging.getLogger(__name__)

READ_TIMEOUT_S = 5.0


class MetricsServer:
    """Serves ``/metrics`` on ``port`` until ``stop`` is set."""

    def __init__(self, redis: Redis, partitions: int, extra: Collect | None = None) -> None:
        self.streams = StreamMetrics(redis, partitions)
        self.exporter = Exporter(lambda: [gauge("orq_up", "1 while the process runs.", 1)], *([extra] if extra else []))

    async def collect(self) -> bytes:
        return self.exporter.render(await self.streams.read())

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT_S)
            method, path, *_ = request.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
            path = path.split("?", 1)[0]
            if method != "GET" or path not in {"/metrics", "/healthz"}:
                status, body, kind = "404 Not Found", b"not found\n", "text/plain"
            elif path == "/healthz":
                status, body, kind = "200 OK", b'{"status": "ok"}', "application/json"
            else:
                status, body, kind = "200 OK", await self.collect(), CONTENT_TYPE
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError):
            status, body, kind = "400 Bad Request", b"bad request\n", "text/plain"
        except Exception:  # a scrape must never take the service down
            log.exception("metrics scrape failed")
            status, body, kind = "500 Internal Server Error", b"error\n", "text/plain"
        with suppress(Exception):
            writer.write(f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
                         "Connection: close\r\n\r\n".encode() + body)
            await writer.drain()
            writer.close()


async def start_metrics_server(
    settings: Settings, stop: asyncio.Event, redis: Redis, extra: Collect | None = None, host: str = "0.0.0.0"
) -> asyncio.Task[None] | None:
    """Serve ``/metrics`` on ``ORQ_METRICS_PORT`` (nothing when it is 0) until ``stop`` is set or the task
    returned is cancelled."""
    if settings.metrics_port <= 0:
        return None
    metrics = MetricsServer(redis, settings.partitions, extra)
    try:
        server = await asyncio.start_server(metrics.handle, host, settings.metrics_port)
    except OSError as exc:  # e.g. several services of `orq dev` in one process: the first one serves
        log.warning("metrics port %d not opened: %s", settings.metrics_port, exc)
        return None
    log.info("metrics on http://%s:%d/metrics", host, settings.metrics_port)

    async def run() -> None:
        async with server:
            await stop.wait()

    task = asyncio.create_task(run(), name="metrics-server")
    # Cancelled before it first ran (a service failing at once), ``run`` never enters ``async with``: close here.
    task.add_done_callback(lambda _: server.close())
    return task

