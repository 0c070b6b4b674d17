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
from services.api.metrics import (
    WINDOW_MINUTES,
    Exposition,
    Figures,
    FiguresCache,
    execution_figures,
    exposition,
    machinery,
)
from services.api.schemas import MinuteThroughput, Stats, StatusCounts
from shared.clock import iso, now_ms


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
    cache: FiguresCache | None = getattr(request.app.state, "figures_cache", None)
    if cache is None:
        cache = request.app.state.figures_cache = FiguresCache()
    figures = await cache.get(ctx.engine, now_ms())
    state = await machinery(ctx.redis, ctx.settings.partitions)
    hub = ctx.feed
    feed = {"subscribers": hub.subscribers, "delivered": hub.stats.delivered, "dropped": hub.stats.dropped}
    return Response(exposition(figures, state, feed), media_type=Exposition.CONTENT_TYPE)


routes = [
    Route("/api/stats", stats, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
]
