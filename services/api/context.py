"""What every route needs, held on ``app.state``: settings, clients, the committer, the action catalogue."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import msgspec
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request

from services.api.feed import FeedHub
from shared.commit import Committer
from shared.plans import Plan
from shared.settings import Settings


@dataclass(frozen=True, slots=True)
class ApiContext:
    """The API's dependencies, injected by ``create_app`` (no global clients)."""

    settings: Settings
    redis: Redis
    engine: AsyncEngine
    committer: Committer
    action_types: Mapping[str, type[msgspec.Struct]]
    feed: FeedHub

    def plan(self, name: str) -> Plan:
        """The tenant's plan; a plan removed from the configuration falls back to the most restrictive one."""
        plans = self.settings.plans
        if name in plans:
            return plans[name]
        return min(plans.values(), key=lambda p: (p.monthly_quota == 0, p.monthly_quota))


def context(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.api
    return ctx
