"""The optimistic read → guarded commit → read-again loop, against a real Redis and the real committer."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from shared.domain import commit_script
from shared.infra.errors import Conflict
from shared.infra.optimistic import ATTEMPTS, MOVED, Moved, optimistically
from shared.log import keys
from shared.log.commit import Applied, Committer, Refused, Unit
from shared.log.events import ExecutionCancelled
from shared.log.redis import text

STATE = keys.execution(0, "e1")


@pytest.fixture
async def committer(redis: Redis) -> AsyncIterator[Committer]:
    committer = commit_script.committer(redis)
    yield committer
    await committer.close()


class Bump:
    """Moves ``STATE``'s counter one step, guarded on the value it read; ``rivals`` rounds lose a race first."""

    def __init__(self, redis: Redis, committer: Committer, rivals: int) -> None:
        self.redis, self.committer, self.rivals, self.rounds = redis, committer, rivals, 0

    async def __call__(self) -> int | Moved:
        self.rounds += 1
        seen = int(text(await self.redis.hget(STATE, "n")) or 0)
        if self.rivals:  # another writer commits between our read and our commit
            self.rivals -= 1
            await self.redis.hincrby(STATE, "n", 1)
        unit = Unit(0).require(STATE, "n", [str(seen)], "moved").hset(STATE, {"n": seen + 1})
        unit.event(ExecutionCancelled(tenant_id="t", aggregate_id="e1", ts=self.rounds))
        outcome = await self.committer.commit(unit)
        if isinstance(outcome, Applied):
            return seen + 1
        assert outcome == Refused("moved", str(seen + 1))
        return MOVED


async def test_a_refusal_because_the_state_moved_is_decided_again_on_a_fresh_read(
    redis: Redis, committer: Committer
) -> None:
    await redis.hset(STATE, "n", 0)
    bump = Bump(redis, committer, rivals=2)
    assert await optimistically(bump, exhausted=Conflict("busy")) == 3
    assert bump.rounds == 3
    assert await redis.hget(STATE, "n") == b"3"
    assert await redis.xlen(keys.log(0)) == 1  # only the applied round appended its event


async def test_a_state_that_keeps_moving_ends_in_the_given_error_after_the_default_bound(
    redis: Redis, committer: Committer
) -> None:
    await redis.hset(STATE, "n", 0)
    bump = Bump(redis, committer, rivals=100)
    with pytest.raises(Conflict, match="busy"):
        await optimistically(bump, exhausted=Conflict("busy"))
    assert bump.rounds == ATTEMPTS == 3
    assert await redis.xlen(keys.log(0)) == 0


async def test_a_bound_and_a_fallback_given_by_the_caller(redis: Redis, committer: Committer) -> None:
    await redis.hset(STATE, "n", 0)
    bump = Bump(redis, committer, rivals=100)

    async def given_up() -> int:
        return -1

    assert await optimistically(bump, attempts=5, exhausted=given_up) == -1
    assert bump.rounds == 5


async def test_an_answer_other_than_moved_is_final_at_once() -> None:
    rounds: list[int] = []

    async def attempt() -> str | Moved:
        rounds.append(1)
        return "not found"

    assert await optimistically(attempt, exhausted=Conflict("busy")) == "not found"
    assert rounds == [1]
    with pytest.raises(ValueError, match="attempts"):
        await optimistically(attempt, attempts=0, exhausted=Conflict("busy"))
