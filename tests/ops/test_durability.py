"""The checks every service runs on start (Redis version, eviction policy), and the rewound-Redis guard."""

from __future__ import annotations

import logging

import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.infra.errors import ConfigError
from shared.infra.settings import Settings
from shared.log import keys
from shared.log.durability import check_policy, check_rewind, check_version, ensure_durable
from tests.projector.factories import append, random_history, snapshot
from tests.projector.helpers import caught_up, checkpoints, projector, running

PARTITIONS = 4


@pytest.mark.parametrize("policy", ["allkeys-lru", "allkeys-lfu", "allkeys-random", "volatile-lru", "volatile-ttl"])
def test_evicting_policies_are_refused(policy: str) -> None:
    with pytest.raises(ConfigError, match="noeviction"):
        check_policy(policy, allow=False)
    check_policy(policy, allow=True)  # ORQ_ALLOW_EVICTION: a warning, not a refusal


def test_noeviction_passes() -> None:
    check_policy("noeviction", allow=False)
    check_policy(None, allow=False)  # CONFIG not available (managed Redis): cannot tell, goes on


@pytest.mark.parametrize("version", ["5.0.14", "6.0.16", "6.1.0"])
def test_a_redis_before_6_2_is_refused(version: str) -> None:
    with pytest.raises(ConfigError, match="needs Redis 6.2 or newer") as refused:
        check_version(version)
    assert version in refused.value.message


@pytest.mark.parametrize("version", ["6.2.0", "6.2.14", "7.0.15", "7.4.2", "10.0.0"])
def test_redis_6_2_and_newer_pass(version: str) -> None:
    check_version(version)


async def test_services_refuse_a_redis_that_evicts(redis: Redis, settings: Settings) -> None:
    # CONFIG is server-wide: other tests' services on this server see it too, so keep the window tiny.
    previous = (await redis.config_get("maxmemory-policy"))["maxmemory-policy"]
    try:
        await redis.config_set("maxmemory-policy", "allkeys-lru")
        with pytest.raises(ConfigError) as refused:
            await ensure_durable(redis, settings)
        await ensure_durable(redis, settings.with_overrides(allow_eviction=True))
    finally:
        await redis.config_set("maxmemory-policy", previous if previous != "allkeys-lru" else "noeviction")
    assert "allkeys-lru" in refused.value.message and "deploy/redis.conf" in refused.value.message
    await ensure_durable(redis, settings)


async def test_a_rewound_redis_is_refused_loudly(
    redis: Redis, engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    await append(redis, random_history(51, tenants=3, executions=6), PARTITIONS)
    async with running(projector(redis, engine, PARTITIONS)):
        await caught_up(redis, engine, PARTITIONS)
    marks = await checkpoints(engine)
    before = await snapshot(engine)
    # Redis comes back from an older snapshot: each log holds only its first entries (the rest is lost).
    logs = {p: await redis.xrange(keys.log(p)) for p in marks}
    for p, entries in logs.items():
        await redis.delete(keys.log(p))
        for entry_id, fields in entries[: len(entries) // 2]:
            await redis.xadd(keys.log(p), fields, id=entry_id)
    p = next(iter(marks))

    with caplog.at_level(logging.ERROR, logger="shared.log.durability"):
        assert not await check_rewind(redis, p, marks[p], accept=False)
        async with running(projector(redis, engine, PARTITIONS)):
            # New events after the restart get ids past the checkpoint: still a rewind (its entry is gone).
            await append(redis, random_history(52, tenants=3, executions=2, prefix="after"), PARTITIONS)
            assert not await check_rewind(redis, p, marks[p], accept=False)
    assert "REDIS WAS REWOUND" in caplog.text
    assert await snapshot(engine) == before  # the projector refused every rewound partition
    assert await checkpoints(engine) == marks

    assert await check_rewind(redis, p, marks[p], accept=True)  # ORQ_ACCEPT_REWOUND_REDIS


async def test_accepting_a_log_that_ends_early_moves_its_id_past_the_checkpoint(redis: Redis) -> None:
    await redis.xadd(keys.log(0), {"t": "x"}, id="100-0")
    assert not await check_rewind(redis, 0, "200-5", accept=False)
    assert await check_rewind(redis, 0, "200-5", accept=True)
    new_id = (await redis.xadd(keys.log(0), {"t": "y"}, id="*")).decode()
    assert tuple(map(int, new_id.split("-"))) > (200, 5)  # not skipped as already projected


async def test_no_checkpoint_or_a_log_ahead_is_fine(redis: Redis) -> None:
    assert await check_rewind(redis, 0, None, accept=False)
    entry = (await redis.xadd(keys.log(0), {"t": "x"})).decode()
    assert await check_rewind(redis, 0, entry, accept=False)
    assert await check_rewind(redis, 0, "1-0", accept=False)
