"""Bearer authentication: the admin token, a tenant API key ``orq_<tenant_id>_<secret>``, or a robot key
``orqr_<tenant_id>_<robot_id>_<secret>`` (robot routes only, see shared/domain/robots/registry.py).

The tenant id (and so the partition) is read from the key itself; the key's SHA-256 is compared in constant
time with the ``key_hash`` of the tenant's (or robot's) hash. Only the hash is ever stored.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Callable, Mapping
from typing import Any

from starlette.requests import Request

from services.api.context import context
from shared.domain.aggregates import TenantState, tenant_from_hash
from shared.domain.robots.registry import ROBOT_KEY, RobotState, robot_from_hash, touch_robot
from shared.infra.clock import now_ms
from shared.infra.errors import Forbidden, Unauthorized
from shared.log import keys

KEY_PREFIX = "orq_"
_KEY = re.compile(r"^orq_(?P<tenant>[A-Za-z0-9-]{1,64})_(?P<secret>[A-Za-z0-9_-]{16,128})$")
# Compared against when the tenant is unknown, so a miss costs the same as a wrong secret.
_NO_TENANT_HASH = hashlib.sha256(b"no tenant").hexdigest()


def new_api_key(tenant_id: str) -> str:
    return f"{KEY_PREFIX}{tenant_id}_{secrets.token_urlsafe(32)}"


def key_hash(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


def key_prefix(api_key: str) -> str:
    """What may be shown to identify a key: the tenant part and a few characters of the secret."""
    return api_key[:40]


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("missing bearer token: send 'Authorization: Bearer <api key>'")
    return token.strip()


def _is_admin(token: str, admin_token: str) -> bool:
    return bool(admin_token) and hmac.compare_digest(token.encode(), admin_token.encode())


async def require_admin(request: Request) -> None:
    """The caller holds the admin token; a tenant key gets 403, anything else 401."""
    token = _bearer(request)
    if _is_admin(token, context(request).settings.admin_token):
        return
    if ROBOT_KEY.match(token) is None:
        await require_tenant(request)
    elif await _verified_robot(request, token, touch=False) is None:
        raise Unauthorized("invalid API key")
    raise Forbidden("this operation needs the admin token")


async def require_tenant(request: Request) -> TenantState:
    """The tenant whose API key the caller holds; the admin token gets 403 (it acts on no tenant)."""
    tenant, _ = await require_tenant_reading(request, None)
    return tenant


async def require_tenant_reading(request: Request, key_of: Callable[[int], str] | None,
                                 ) -> tuple[TenantState, dict[Any, Any]]:
    """:func:`require_tenant`, plus the hash at ``key_of(partition)`` read in the same round trip (a route
    that needs one of the tenant's aggregates saves a round trip; the hash is only returned once the key is
    verified)."""
    token = _bearer(request)
    ctx = context(request)
    match = _KEY.match(token)
    if match is None:
        if _is_admin(token, ctx.settings.admin_token):
            raise Forbidden("this operation needs a tenant API key, not the admin token")
        # Verified first (a miss costs a round trip only on this error path): a 403 tells the caller its key is good.
        if ROBOT_KEY.match(token) is not None and await _verified_robot(request, token, touch=False) is not None:
            raise Forbidden("this route needs a tenant API key, not a robot key")
        raise Unauthorized("invalid API key")
    tenant_id = match.group("tenant")
    p = keys.partition_of(tenant_id, ctx.settings.partitions)
    replies: list[dict[Any, Any]]
    if key_of is None:
        replies = [await ctx.redis.hgetall(keys.tenant(p, tenant_id)), {}]
    else:
        async with ctx.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.tenant(p, tenant_id))
            pipe.hgetall(key_of(p))
            replies = await pipe.execute()
    tenant = tenant_from_hash(tenant_id, p, replies[0])
    expected = tenant.key_hash if tenant is not None else _NO_TENANT_HASH
    if not hmac.compare_digest(key_hash(token).encode(), expected.encode()) or tenant is None:
        raise Unauthorized("invalid API key")
    # A paused tenant keeps its API: its executions wait, nothing is refused or lost.
    return tenant, replies[1]


async def require_robot(request: Request) -> RobotState:
    """The robot whose key the caller holds, its call recorded as ``last_seen`` (same round trip). A tenant API key
    or the admin token gets 403 (this route is a robot's); anything else, a deleted robot's key included, 401."""
    token = _bearer(request)
    if ROBOT_KEY.match(token) is None:
        ctx = context(request)
        if _is_admin(token, ctx.settings.admin_token):
            raise Forbidden("this route needs a robot key, not the admin token")
        if _KEY.match(token) is not None:
            await require_tenant(request)  # a wrong tenant key is a 401 like any wrong key
            raise Forbidden("this route needs a robot key, not a tenant API key")
        raise Unauthorized("invalid robot key")
    robot = await _verified_robot(request, token, touch=True)
    if robot is None:
        raise Unauthorized("invalid robot key")
    return robot


async def _verified_robot(request: Request, token: str, *, touch: bool) -> RobotState | None:
    """The robot of ``token`` (a string matching the robot key pattern) if the key is its current one, else None.
    ``touch``: record the call as the robot's ``last_seen`` (only a robot route's call counts as the robot seen)."""
    match = ROBOT_KEY.match(token)
    assert match is not None
    ctx = context(request)
    tenant_id, robot_id = match.group("tenant"), match.group("robot")
    p = keys.partition_of(tenant_id, ctx.settings.partitions)
    digest = key_hash(token)
    raw: Mapping[Any, Any]
    if touch:
        raw = await touch_robot(ctx.redis, p, robot_id, digest, now_ms())
    else:
        raw = await ctx.redis.hgetall(keys.robot(p, robot_id))
    robot = robot_from_hash(robot_id, p, raw)
    expected = robot.key_hash if robot is not None else _NO_TENANT_HASH
    if not hmac.compare_digest(digest.encode(), expected.encode()) or robot is None:
        return None
    if robot.tenant_id != tenant_id:  # the key names another tenant than the robot's: not this robot's key
        return None
    return robot
