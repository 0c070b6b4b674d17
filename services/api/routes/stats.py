"""``GET /api/stats`` (the tenant's execution statistics) and ``GET /metrics`` (Prometheus, every tenant).

What comes from where is described in :mod:`services.api.metrics`. ``/metrics`` is unauthenticated, like
``/healthz``: it carries totals only, no tenant, workflow or execution ids, and scrapers rarely hold keys.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.api import responses
from services.api.auth import require_tenant
from services.api.context import context
from services.api.metrics import WINDOW_MINUTES, ApiMetrics, Figures, execution_figures
from services.api.schemas import MinuteThroughput, Stats, StatusCounts
from shared.infra.clock import iso, now_ms
from shared.service.metrics import CONTENT_TYPE


def stats_body(figures: Figures) -> Stats:
    return Stats(
        counts=StatusCounts(**figures.counts),
        depth_by_priority={str(p): n for p, n in figures.depth.items()},
        throughput_per_minute=round(figures.throughput_per_minute, 3),
        throughput=[
            MinuteThroughput(minute=iso(b.start) or "", completed=b.completed, failed=b.failed)
            for b in figures.buckets
        ],
        avg_duration_ms=None if figures.avg_duration_ms is None else round(figures.avg_duration_ms, 1),
        p95_duration_ms=figures.p95_duration_ms,
        error_rate=None if figures.error_rate is None else round(figures.error_rate, 4),
        window_minutes=WINDOW_MINUTES,
        generated_at=iso(figures.now) or "",
        as_of=figures.as_of,
    )


async def stats(request: Request) -> Response:
    tenant = await require_tenant(request)
    figures = await execution_figures(context(request).engine, now_ms(), tenant.id, tenant.partition)
    return responses.json(stats_body(figures))


async def metrics(request: Request) -> Response:
    ctx = context(request)
    exporter: ApiMetrics | None = getattr(request.app.state, "metrics", None)
    if exporter is None:  # one per app (its registry holds the process collectors), made at the first scrape
        exporter = request.app.state.metrics = ApiMetrics()
    hub = ctx.feed
    feed = {"subscribers": hub.subscribers, "delivered": hub.stats.delivered, "dropped": hub.stats.dropped}
    body = await exporter.scrape(ctx.engine, ctx.redis, ctx.settings.partitions, feed, now_ms())
    return Response(body, media_type=CONTENT_TYPE)


routes = [
    Route("/api/stats", stats, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
]
