"""Pinned definitions are read from Redis once, then served from memory within a bound."""

from __future__ import annotations

from redis.asyncio import Redis

from shared.domain.aggregates import encode_definition
from shared.domain.executions.pinned import PinnedDefinitions
from shared.log import keys
from shared.log.workflows import StepDef, WorkflowDef


def _definition(name: str) -> WorkflowDef:
    return WorkflowDef(name=name, steps=[StepDef(action="noop")])


async def test_a_version_is_read_once_and_then_served_from_memory(redis: Redis) -> None:
    pinned = PinnedDefinitions()
    await redis.set(keys.workflow_version(2, "wf", 1), encode_definition(_definition("first")))
    assert await pinned.read(redis, 2, "wf", 1) == _definition("first")
    await redis.delete(keys.workflow_version(2, "wf", 1))
    assert await pinned.read(redis, 2, "wf", 1) == _definition("first")


async def test_a_missing_version_is_none_and_is_not_remembered(redis: Redis) -> None:
    pinned = PinnedDefinitions()
    assert await pinned.read(redis, 0, "wf", 3) is None
    await redis.set(keys.workflow_version(0, "wf", 3), encode_definition(_definition("late")))
    assert await pinned.read(redis, 0, "wf", 3) == _definition("late")


async def test_the_least_recently_used_is_dropped_past_the_bound(redis: Redis) -> None:
    pinned = PinnedDefinitions(size=2)
    for version in (1, 2, 3):
        await redis.set(keys.workflow_version(0, "wf", version), encode_definition(_definition(f"v{version}")))
    await pinned.read(redis, 0, "wf", 1)
    await pinned.read(redis, 0, "wf", 2)
    await pinned.read(redis, 0, "wf", 1)  # 1 is now the most recent, 2 the least
    await pinned.read(redis, 0, "wf", 3)
    await redis.delete(*(keys.workflow_version(0, "wf", v) for v in (1, 2, 3)))
    assert await pinned.read(redis, 0, "wf", 1) == _definition("v1")
    assert await pinned.read(redis, 0, "wf", 3) == _definition("v3")
    assert await pinned.read(redis, 0, "wf", 2) is None


def test_a_body_already_at_hand_is_decoded_once() -> None:
    pinned = PinnedDefinitions()
    body = encode_definition(_definition("carried"))
    assert pinned.decoded("k", body) == _definition("carried")
    assert pinned.decoded("k", b"") == _definition("carried")
    assert pinned.decoded("unknown", b"") is None
