"""What every route needs, held on ``app.state``: settings, clients, the committer, the action catalogue."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import msgspec
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request

from services.api.feed import FeedHub
from services.api.offers import OfferWaiters
from shared.domain.executions.pinned import PinnedDefinitions
from shared.infra.plans import Plan, plan_named
from shared.infra.settings import Settings
from shared.log.commit import Committer


@dataclass(frozen=True, slots=True)
class ApiContext:
    """The API's dependencies, injected by ``create_app`` (no global clients)."""

    settings: Settings
    redis: Redis
    engine: AsyncEngine
    committer: Committer
    action_types: Mapping[str, type[msgspec.Struct]]
    feed: FeedHub
    offers: OfferWaiters
    definitions: PinnedDefinitions = field(default_factory=PinnedDefinitions)

    def plan(self, name: str) -> Plan:
        return plan_named(self.settings.plans, name)


def context(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.api
    return ctx
