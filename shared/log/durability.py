"""Refuse to run on a Redis that may lose events (eviction policies, a Redis rewound behind SQL) or that is too
old for the scripts (before 6.2: no ``LPOP`` with a count, no ``XAUTOCLAIM``).

Redis is the event log, not a cache. Under ``allkeys-*`` or ``volatile-*`` eviction a full Redis silently
drops keys (log entries, execution state) instead of refusing writes; every service checks the policy on
start and stops with a clear message (``ORQ_ALLOW_EVICTION=1`` lets a developer go on anyway). The
settings to ship are in ``deploy/redis.conf`` (AOF on, ``appendfsync everysec``, ``noeviction``).

A Redis restored from an old snapshot (or one that lost its AOF tail) is *rewound*: the projector's
checkpoint (in SQL) is ahead of the stream's last id. New events would then get ids at or below the
checkpoint and be skipped as "already applied" — silently. :func:`check_rewind` says so loudly and keeps
the projector off that partition until an operator decides (``ORQ_ACCEPT_REWOUND_REDIS=1``: move the
stream's id past the checkpoint and go on; see docs/operations.md, "Redis was rewound").
"""

from __future__ import annotations

import logging

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from shared.infra.clock import stream_id_parts
from shared.infra.errors import ConfigError
from shared.infra.settings import Settings
from shared.log import keys
from shared.log.redis import text

log = logging.getLogger(__name__)

EVICTING_PREFIXES = ("allkeys-", "volatile-")
MIN_REDIS = (6, 2)


def check_version(version: str) -> None:
    """Raise :class:`ConfigError` for a Redis server older than :data:`MIN_REDIS`."""
    parts = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    if parts < MIN_REDIS:
        raise ConfigError(f"Redis {version} is too old: Orquesta needs Redis {'.'.join(map(str, MIN_REDIS))} or "
                          "newer (LPOP with a count, XAUTOCLAIM)", version=version)


def check_policy(policy: str | None, *, allow: bool) -> None:
    """Raise :class:`ConfigError` for an evicting ``maxmemory-policy`` unless ``allow``."""
    if policy is None or not policy.startswith(EVICTING_PREFIXES):
        return
    message = (
        f"Redis maxmemory-policy is {policy!r}: under memory pressure Redis would evict keys and lose events. "
        "Set `maxmemory-policy noeviction` (see deploy/redis.conf), or ORQ_ALLOW_EVICTION=1 for development."
    )
    if allow:
        log.warning("%s (going on: ORQ_ALLOW_EVICTION is set)", message)
        return
    raise ConfigError(message, policy=policy)


async def eviction_policy(redis: Redis) -> str | None:
    """``CONFIG GET maxmemory-policy``; None where CONFIG is not allowed (some managed Redis services)."""
    try:
        reply = await redis.config_get("maxmemory-policy")
    except ResponseError as exc:
        log.warning("cannot read Redis maxmemory-policy (%s); make sure it is noeviction", exc)
        return None
    value = reply.get("maxmemory-policy") or reply.get(b"maxmemory-policy")  # type: ignore[call-overload]
    return None if value is None else text(value)


async def ensure_durable(redis: Redis, settings: Settings) -> None:
    """Every service's first step: stop with a clear message on an evicting or too old Redis."""
    check_version(text((await redis.info("server"))["redis_version"]))
    check_policy(await eviction_policy(redis), allow=settings.allow_eviction)


async def log_bounds(redis: Redis, stream: str) -> tuple[str, str]:
    """(first entry id or "", last id ever generated) of ``stream``; ("", "0-0") if it does not exist."""
    try:
        info = await redis.xinfo_stream(stream)
    except ResponseError:  # no such key
        return "", "0-0"
    first = info.get("first-entry")
    return (text(first[0]) if first else ""), (text(info.get("last-generated-id")) or "0-0")


async def rewound(redis: Redis, p: int, checkpoint: str) -> str | None:
    """Why partition ``p``'s log looks older than the projection checkpoint (None when it does not).

    Either the log ends before the checkpoint, or events were added since the restart (with ids after it)
    but the checkpoint's own entry is missing although the log still holds older entries: trimming keeps
    the checkpoint's entry, so only a restore from an older snapshot loses it.
    """
    stream = keys.log(p)
    first, last = await log_bounds(redis, stream)
    mark = stream_id_parts(checkpoint)
    if stream_id_parts(last) < mark:
        return f"the log ends at {last}, before the checkpoint {checkpoint}"
    if first and stream_id_parts(first) < mark and not await redis.xrange(stream, checkpoint, checkpoint):
        return f"the log holds entries from {first} but not the checkpoint's own entry {checkpoint}"
    return None


async def check_rewind(redis: Redis, p: int, checkpoint: str | None, *, accept: bool) -> bool:
    """True when partition ``p`` may be projected: its log is not behind the SQL checkpoint.

    A rewound log is logged as an error and refused, unless ``accept``: then, if the log ends before the
    checkpoint, its id is moved there (``XSETID``) so new events are not skipped as already projected, and
    the projector goes on.
    """
    if checkpoint is None:
        return True
    reason = await rewound(redis, p, checkpoint)
    if reason is None:
        return True
    if not accept:
        log.error(
            "REDIS WAS REWOUND: partition %d: %s. Events the projection has were lost from Redis (restored from an "
            "old snapshot, or the AOF lost its tail), so Redis state is older than the SQL tables. Refusing to "
            "project partition %d. Restore the right Redis backup, or set ORQ_ACCEPT_REWOUND_REDIS=1 to go on "
            "(see docs/operations.md).",
            p, reason, p,
        )
        return False
    _, last = await log_bounds(redis, keys.log(p))
    if stream_id_parts(last) < stream_id_parts(checkpoint):
        await redis.execute_command("XSETID", keys.log(p), checkpoint)  # type: ignore[no-untyped-call]
    log.error("partition %d: Redis was rewound (%s); ORQ_ACCEPT_REWOUND_REDIS is set: projecting on", p, reason)
    return True
