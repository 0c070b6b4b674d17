"""Robots: registered and deleted as events (checked on Redis state), listed from SQL with their live fields.

The list reads the ``robots`` table for who exists (paged and filtered like every list) and the robot hashes for
``last_seen`` and ``task``: those change at every robot call, far too often to be events, so only Redis has them.
One pipelined HMGET for the page's robots (at most a page of them) keeps that one round trip.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Row
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.api import responses
from services.api.auth import key_hash, require_robot, require_tenant
from services.api.bodies import read_json
from services.api.context import ApiContext, context
from services.api.ownership import MAX_ID_LENGTH, owned_row
from services.api.pagination import live_page, page_request
from services.api.schemas import Robot, RobotIn, RobotPage, RobotRegistered, RobotSelf
from shared.domain.aggregates import TenantState
from shared.domain.robots.registry import (
    NAME_TAKEN_GUARD,
    POOL_PATTERN,
    RobotState,
    delete_unit,
    new_robot_key,
    read_robot,
    register_unit,
    robot_key_prefix,
    robot_status,
)
from shared.infra.clock import iso, new_id, now_ms
from shared.infra.errors import Conflict, NotFound, ValidationFailed
from shared.log import keys
from shared.log.commit import Applied, Refused
from shared.log.redis import text
from shared.readmodel.schema import robots

_POOL = re.compile(POOL_PATTERN)


async def register_robot(request: Request) -> Response:
    tenant = await require_tenant(request)
    ctx = context(request)
    body = await read_json(request, RobotIn)
    robot_id = new_id()
    robot_key = new_robot_key(tenant.id, robot_id)
    unit = register_unit(p=tenant.partition, tenant_id=tenant.id, robot_id=robot_id, name=body.name, pool=body.pool,
                         key_hash=key_hash(robot_key), key_prefix=robot_key_prefix(robot_key), now_ms=now_ms())
    match await ctx.committer.commit(unit):
        case Applied():
            return responses.json(RobotRegistered(id=robot_id, name=body.name, pool=body.pool, robot_key=robot_key),
                                  201)
        case Refused(label=label) if label == NAME_TAKEN_GUARD:
            raise Conflict(f"a robot named {body.name!r} exists already", field="name")
        case _:
            raise Conflict("robot id collision, try again")


async def owned_robot(ctx: ApiContext, tenant: TenantState, robot_id: str) -> RobotState:
    """The tenant's robot, from its Redis hash; anything else (unknown, deleted, another tenant's) is a 404."""
    robot = await read_robot(ctx.redis, tenant.partition, robot_id) if len(robot_id) <= MAX_ID_LENGTH else None
    if robot is None or robot.tenant_id != tenant.id:
        raise NotFound(f"robot {robot_id} not found")
    return robot


async def delete_robot(request: Request) -> Response:
    tenant = await require_tenant(request)
    ctx = context(request)
    robot_id = request.path_params["id"]
    robot = await owned_robot(ctx, tenant, robot_id)
    outcome = await ctx.committer.commit(delete_unit(robot=robot, now_ms=now_ms()))
    if not isinstance(outcome, Applied):  # deleted meanwhile by another call
        raise NotFound(f"robot {robot_id} not found")
    return responses.no_content()


async def _views(ctx: ApiContext, tenant: TenantState, rows: Sequence[Row[Any]]) -> list[Robot]:
    """The rows with their live fields from Redis (one pipelined round trip for the page)."""
    if not rows:
        return []
    async with ctx.redis.pipeline(transaction=False) as pipe:
        for row in rows:
            pipe.hmget(keys.robot(tenant.partition, row.id), ["tenant", "last_seen", "task"])
        live: list[list[Any]] = await pipe.execute()
    now = now_ms()
    offline_after = int(ctx.settings.robot_offline_s * 1000)
    views = []
    for row, (owner, last_seen, task) in zip(rows, live, strict=True):
        # No hash (deleted since the row was read): never seen again, so offline, holding nothing.
        state = RobotState(id=row.id, tenant_id=tenant.id, partition=tenant.partition, name=row.name, pool=row.pool,
                           key_hash="", created_at=row.created_at,
                           last_seen=int(text(last_seen)) if owner and last_seen else None,
                           task=(text(task) or None) if owner else None)
        views.append(Robot(id=row.id, name=row.name, pool=row.pool, status=robot_status(state, now, offline_after),
                           last_seen_at=iso(state.last_seen), current_task=state.task, created_at=iso(row.created_at)))
    return views


async def list_robots(request: Request) -> Response:
    tenant = await require_tenant(request)
    ctx = context(request)
    conditions = []
    pool = request.query_params.get("pool")
    if pool is not None:
        if _POOL.match(pool) is None:
            raise ValidationFailed("pool: 1 to 64 of A-Z a-z 0-9 _ . -", field="pool")
        conditions.append(robots.c.pool == pool)
    rows, cursor = await live_page(ctx.engine, robots, tenant.id, page_request(request), *conditions)
    return responses.json(RobotPage(items=await _views(ctx, tenant, rows), next_cursor=cursor))


async def get_robot(request: Request) -> Response:
    tenant = await require_tenant(request)
    ctx = context(request)
    row = await owned_row(ctx.engine, robots, "robot", request.path_params["id"], tenant)
    (view,) = await _views(ctx, tenant, [row])
    return responses.json(view)


async def robot_me(request: Request) -> Response:
    """The calling robot itself: what ``orq robot`` checks at start-up (and a cheap way to say "I am here")."""
    robot = await require_robot(request)
    return responses.json(RobotSelf(id=robot.id, name=robot.name, pool=robot.pool, tenant_id=robot.tenant_id))


routes = [
    Route("/api/robots", register_robot, methods=["POST"]),
    Route("/api/robots", list_robots, methods=["GET"]),
    # Before /api/robots/{id}: "me" is no robot id.
    Route("/api/robots/me", robot_me, methods=["GET"]),
    Route("/api/robots/{id}", get_robot, methods=["GET"]),
    Route("/api/robots/{id}", delete_robot, methods=["DELETE"]),
]
