"""A tiny HTTP port serving Prometheus text (``ORQ_METRICS_PORT``) for services without an HTTP API.

The executor, projector, trigger and notifier start it from ``serve()``; it is off by default (port 0).
It serves ``GET /metrics`` (the deployment's stream metrics read from Redis — lag, pending, DLQ size per
partition, the same on every instance — plus what the service itself adds) and ``GET /healthz``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import suppress
from dataclasses import dataclass

from redis.asyncio import Redis

from shared.inspection import partition_status
from shared.settings import Settings

log = logging.getLogger(__name__)

Labels = tuple[tuple[str, str], ...]
# Stream metrics are read from Redis at most this often, however often Prometheus scrapes.
CACHE_S = 2.0
READ_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class Metric:
    """One metric family: name, type (``gauge``/``counter``), help, and samples by label set."""

    name: str
    type: str
    help: str
    samples: Mapping[Labels, float]


Collect = Callable[[], Iterable[Metric]]


def render(metrics: Iterable[Metric]) -> str:
    """Prometheus text exposition format 0.0.4."""
    lines: list[str] = []
    for metric in metrics:
        lines.append(f"# HELP {metric.name} {metric.help}")
        lines.append(f"# TYPE {metric.name} {metric.type}")
        for labels, value in metric.samples.items():
            rendered = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
            number = "NaN" if math.isnan(value) else repr(float(value))
            lines.append(f"{metric.name}{{{rendered}}} {number}" if rendered else f"{metric.name} {number}")
    return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


async def stream_metrics(redis: Redis, partitions: int) -> list[Metric]:
    """Lag, pending and length of every group on the log, work and notify streams; DLQ size."""
    lag: dict[Labels, float] = {}
    pending: dict[Labels, float] = {}
    length: dict[Labels, float] = {}
    dlq: dict[Labels, float] = {}
    for status in await partition_status(redis, partitions):
        p = str(status.partition)
        dlq[(("partition", p),)] = status.dlq
        length[(("partition", p), ("stream", "log"))] = status.log_length
        for group in status.groups:
            labels = (("partition", p), ("stream", group.stream), ("group", group.name))
            lag[labels] = lag.get(labels, 0) + group.lag
            pending[labels] = pending.get(labels, 0) + group.pending
    return [
        Metric("orq_consumer_group_lag", "gauge", "entries not yet delivered to the group", lag),
        Metric("orq_consumer_group_pending", "gauge", "entries delivered and not yet acknowledged", pending),
        Metric("orq_stream_length", "gauge", "entries in the stream", length),
        Metric("orq_dlq_size", "gauge", "executions in the dead-letter queue", dlq),
    ]


class MetricsServer:
    """Serves ``/metrics`` on ``port`` until ``stop`` is set."""

    def __init__(self, redis: Redis, partitions: int, extra: Collect | None = None) -> None:
        self.redis = redis
        self.partitions = partitions
        self.extra = extra
        self._cached: tuple[float, list[Metric]] = (0.0, [])

    async def collect(self) -> str:
        at, metrics = self._cached
        if time.monotonic() - at > CACHE_S:
            metrics = await stream_metrics(self.redis, self.partitions)
            self._cached = (time.monotonic(), metrics)
        up = Metric("orq_up", "gauge", "1 while the process runs", {(): 1.0})
        return render([up, *metrics, *(self.extra() if self.extra else [])])

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
                status, body, kind = "200 OK", (await self.collect()).encode(), "text/plain; version=0.0.4"
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
    """Serve ``/metrics`` on ``ORQ_METRICS_PORT`` (nothing when it is 0) until ``stop`` is set."""
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

    return asyncio.create_task(run(), name="metrics-server")


def counter(name: str, help_text: str, value: float) -> Metric:
    """A single unlabelled counter (for a service's own ``extra`` metrics)."""
    return Metric(name, "counter", help_text, {(): float(value)})


def gauge(name: str, help_text: str, value: float) -> Metric:
    """A single unlabelled gauge."""
    return Metric(name, "gauge", help_text, {(): float(value)})
