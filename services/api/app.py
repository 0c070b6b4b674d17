"""The Starlette application: routes, the body size limit, and the one error mapping.

Clients are injected (``create_app(settings, redis, engine)``) and reach the routes through
``app.state.api``; nothing is created at import time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from services.api import openapi
from services.api.context import ApiContext
from services.api.errors import exception_handlers
from services.api.feed import FeedHub
from services.api.limits import BodySizeLimit
from services.api.offers import OfferWaiters
from services.api.routes import (
    dlq,
    execute,
    executions,
    health,
    history,
    home,
    notifications,
    pausing,
    queue_items,
    queues,
    robot_tasks,
    robots,
    stats,
    tenants,
    triggers,
    webhooks,
    workflows,
    ws,
)
from services.api.tracing import RequestSpans
from shared.domain import commit_script
from shared.domain.actions.schemas import load_plugins, param_types
from shared.infra.settings import Settings
from shared.log.commit import Committer
from shared.service.metrics import configure_happenings

# ``GET /api``: where to start reading the API (the full reference is /openapi.json; /docs/workflows.md in the
# repository says how to write a workflow).
API_INDEX = {
    "name": "Orquesta API",
    "openapi": "/openapi.json",
    "reference": "/reference",
    "health": "/healthz",
    "collections": {
        "workflows": "/api/workflows",
        "executions": "/api/executions",
        "triggers": "/api/triggers",
        "queues": "/api/queues",
        "robots": "/api/robots",
        "dlq": "/api/dlq",
        "tenant": "/api/tenants/me",
    },
    "feed": "/ws/events",
    "auth": "Authorization: Bearer <tenant key> (or the admin token for /api/tenants)",
}


async def api_index(request: Request) -> JSONResponse:
    """A small index of the API, so ``/api`` (the link ``orq dev`` prints) is not a 404."""
    return JSONResponse(API_INDEX)


def all_routes() -> list[BaseRoute]:
    return [
        Route("/api", api_index, methods=["GET"]),
        *tenants.routes,
        *pausing.routes,
        *workflows.routes,
        *execute.routes,
        *history.routes,
        *executions.routes,
        *dlq.routes,
        *queues.routes,
        *queue_items.routes,
        *robot_tasks.routes,
        *robots.routes,
        *notifications.routes,
        *health.routes,
        *openapi.routes,
        *home.routes,
        *triggers.routes,
        *webhooks.routes,
        *stats.routes,
        *ws.routes,
    ]


def create_app(
    settings: Settings, redis: Redis, engine: AsyncEngine, *, committer: Committer | None = None
) -> Starlette:
    """The API over these clients. Without a ``committer``, the app makes one and flushes it on shutdown."""
    configure_happenings(settings.metrics_tenant_label)  # the `tenant` label of what this process counts
    own_committer = committer is None
    ctx = ApiContext(
        settings=settings,
        redis=redis,
        engine=engine,
        committer=committer or commit_script.committer(redis, wait_replicas=settings.redis_wait_replicas),
        action_types=param_types(load_plugins()),
        feed=FeedHub(redis, settings.partitions),
        offers=OfferWaiters(redis, settings.partitions),
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        ctx.feed.start()
        ws.redact_tokens_in_server_logs()
        yield
        await ctx.feed.stop()
        await ctx.offers.close()
        if own_committer:
            await ctx.committer.close()

    app = Starlette(
        routes=all_routes(),
        middleware=[Middleware(RequestSpans), Middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)],
        exception_handlers=exception_handlers(),
        lifespan=lifespan,
    )
    # "/api/workflows/" is not "/api/workflows": answer 404 rather than a redirect clients must follow.
    app.router.redirect_slashes = False
    app.state.api = ctx
    return app
