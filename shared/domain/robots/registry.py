"""Robots: the customer's machines that run ``runs_on`` steps. Their registration in Redis (what robot keys are
checked against) and the units that register and delete them.

Robot hash ``orq:{p}:robot:<id>`` fields: ``tenant``, ``name``, ``pool``, ``key_hash`` (SHA-256 hex of the robot
key; the key itself is shown once and never stored), ``created_at`` (ms). The task protocol keeps the live fields
there too: ``last_seen`` (ms of the robot's last authenticated call) and ``task`` (the task it holds now, absent
when none). ``orq:{p}:robotnames:<tenant>`` maps each robot's casefolded name to its id: names are unique per
tenant regardless of case, and a deleted robot's name is free again.

A robot key reads ``orqr_<tenant id>_<robot id>_<secret>``: the tenant (and so the partition) and the robot are
read from the key itself, as for tenant keys. Tenant keys start ``orq_``, so neither ever passes for the other.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from shared.log import keys
from shared.log.commit import Unit, load_lua
from shared.log.events import RobotDeleted, RobotRegistered
from shared.log.redis import PipelinedScript, run_pipeline, text

ROBOT_KEY_PREFIX = "orqr_"
ROBOT_KEY = re.compile(
    r"^orqr_(?P<tenant>[A-Za-z0-9-]{1,64})_(?P<robot>[0-9a-f]{32})_(?P<secret>[A-Za-z0-9_-]{16,128})$"
)
NAME_MAX = 100
POOL_MAX = 64
POOL_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"

NAME_TAKEN_GUARD = "robot_name_taken"
ROBOT_EXISTS_GUARD = "robot_exists"
ROBOT_GONE_GUARD = "robot_gone"

RobotStatus = Literal["idle", "busy", "offline"]


@dataclass(frozen=True, slots=True)
class RobotState:
    """A robot as Redis holds it (``last_seen`` and ``task`` are the task protocol's live fields)."""

    id: str
    tenant_id: str
    partition: int
    name: str
    pool: str
    key_hash: str
    created_at: int
    last_seen: int | None = None
    task: str | None = None


def name_key(name: str) -> str:
    """The form in which names are compared: "Bot-1" and "bot-1" are one name."""
    return name.casefold()


def new_robot_key(tenant_id: str, robot_id: str) -> str:
    """A fresh key for the robot (the secret as for tenant keys: 32 random bytes, URL-safe)."""
    return f"{ROBOT_KEY_PREFIX}{tenant_id}_{robot_id}_{secrets.token_urlsafe(32)}"


def robot_key_prefix(robot_key: str) -> str:
    """What may be shown to recognise a key: everything before the secret and its first four characters."""
    match = ROBOT_KEY.match(robot_key)
    return robot_key[: match.start("secret") + 4] if match else robot_key[:12]


def robot_from_hash(robot_id: str, p: int, raw: Mapping[Any, Any]) -> RobotState | None:
    """The robot in ``raw`` (an HGETALL reply), or None when it is unknown or deleted.

    A hash without ``tenant`` or ``key_hash`` is no robot: a live-field write racing a delete may leave one
    behind, and it authenticates nothing.
    """
    h = {text(k): text(v) for k, v in raw.items()}
    if not h.get("tenant") or not h.get("key_hash"):
        return None
    last_seen, task = h.get("last_seen"), h.get("task")
    return RobotState(
        id=robot_id,
        tenant_id=h["tenant"],
        partition=p,
        name=h.get("name", ""),
        pool=h.get("pool", ""),
        key_hash=h["key_hash"],
        created_at=int(h.get("created_at") or 0),
        last_seen=int(last_seen) if last_seen else None,
        task=task or None,
    )


async def read_robot(redis: Redis, p: int, robot_id: str) -> RobotState | None:
    return robot_from_hash(robot_id, p, await redis.hgetall(keys.robot(p, robot_id)))


def robot_status(state: RobotState, now_ms: int, offline_after_ms: int) -> RobotStatus:
    """``offline`` when not seen within ``offline_after_ms`` (or never), ``busy`` while it holds a task, else
    ``idle``."""
    if state.last_seen is None or now_ms - state.last_seen > offline_after_ms:
        return "offline"
    return "busy" if state.task else "idle"


def register_unit(
    *, p: int, tenant_id: str, robot_id: str, name: str, pool: str, key_hash: str, key_prefix: str, now_ms: int
) -> Unit:
    """A new robot; refused (``NAME_TAKEN_GUARD``) when the tenant has a robot of that name. The name guard and
    the name's claim are one atomic step, so of two registrations racing for a name exactly one wins."""
    robot_key = keys.robot(p, robot_id)
    names = keys.robot_names(p, tenant_id)
    unit = Unit(p).require(names, name_key(name), [""], NAME_TAKEN_GUARD)
    unit.require_absent(robot_key, ROBOT_EXISTS_GUARD)
    unit.event(RobotRegistered(tenant_id=tenant_id, aggregate_id=robot_id, ts=now_ms, name=name, pool=pool,
                               key_prefix=key_prefix, created_at=now_ms))
    unit.hset(robot_key, {"tenant": tenant_id, "name": name, "pool": pool, "key_hash": key_hash,
                          "created_at": now_ms})
    unit.hset(names, {name_key(name): robot_id})
    return unit


def delete_unit(*, robot: RobotState, now_ms: int) -> Unit:
    """The robot goes: its hash (and with it its key) at once, and its name is free again. Guarded on the key
    seen, so of two racing deletes one appends ``robot.deleted``."""
    p = robot.partition
    robot_key = keys.robot(p, robot.id)
    unit = Unit(p).require(robot_key, "key_hash", [robot.key_hash], ROBOT_GONE_GUARD)
    unit.event(RobotDeleted(tenant_id=robot.tenant_id, aggregate_id=robot.id, ts=now_ms, name=robot.name,
                            pool=robot.pool, created_at=robot.created_at))
    unit.delete(robot_key)
    unit.hdel(keys.robot_names(p, robot.tenant_id), name_key(robot.name))
    return unit


# Record the call as the robot's ``last_seen`` only when the key's hash matches (a wrong key must not keep a robot
# looking online, and a deleted robot's hash must not be brought back by the write), then answer the hash: one
# round trip. The caller still compares the hash in constant time before trusting the reply; this comparison only
# decides the write, on the SHA-256 of the caller's input, so its timing reveals nothing useful.
_SEEN = PipelinedScript(load_lua("shared.domain.robots", "robot_seen.lua"))


async def touch_robot(redis: Redis, p: int, robot_id: str, key_hash: str, now_ms: int) -> dict[bytes, bytes]:
    """The robot's hash (empty when unknown), its ``last_seen`` moved to ``now_ms`` if ``key_hash`` is its own."""

    def build(pipe: Pipeline) -> None:
        _SEEN.queue(pipe, [keys.robot(p, robot_id)], [key_hash, now_ms])

    (flat,) = await run_pipeline(redis, build, [_SEEN])
    return dict(zip(flat[::2], flat[1::2], strict=True))
