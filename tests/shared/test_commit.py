"""The atomic unit and the group committer against a real Redis."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from shared.log import keys
from shared.log.commit import Applied, Committer, Duplicate, Refused, Unit
from shared.log.consumer import records_of
from shared.log.events import ExecutionCancelled


def _cancelled(n: int) -> ExecutionCancelled:
    return ExecutionCancelled(tenant_id="t", aggregate_id=f"e{n}", ts=n)


async def test_a_refused_unit_changes_nothing_and_others_still_apply(redis: Redis) -> None:
    committer = Committer(redis)
    state = keys.execution(0, "x")
    await redis.hset(state, "status", "running")
    refused = Unit(0).require(state, "status", ["queued"], "status").event(_cancelled(1)).hset(state, {"status": "z"})
    applied = Unit(0).event(_cancelled(2)).hset(keys.execution(0, "y"), {"status": "cancelled"})
    first, second = await committer.commit_all([refused, applied])
    assert first == Refused("status", "running")
    assert isinstance(second, Applied) and len(second.event_ids) == 1
    assert await redis.hget(state, "status") == b"running"
    assert [r.event().aggregate_id for r in records_of(await redis.xrange(keys.log(0)))] == ["e2"]
    await committer.close()


async def test_idempotency_key_returns_the_first_reply(redis: Redis) -> None:
    committer = Committer(redis)
    key = keys.idempotency(1, "t", "k")
    first = await committer.commit(Unit(1).idempotent(key).event(_cancelled(1)).set(key, b"reply-1", 60))
    second = await committer.commit(Unit(1).idempotent(key).event(_cancelled(2)).set(key, b"reply-2", 60))
    assert isinstance(first, Applied)
    assert second == Duplicate(b"reply-1")
    assert await redis.xlen(keys.log(1)) == 1
    await committer.close()


async def test_commits_survive_a_script_cache_flush(redis: Redis) -> None:
    """A restarted Redis has no scripts: the committer loads it again and nothing runs twice."""
    committer = Committer(redis)
    assert isinstance(await committer.commit(Unit(2).event(_cancelled(1))), Applied)
    await redis.script_flush()
    assert isinstance(await committer.commit(Unit(2).event(_cancelled(2))), Applied)
    assert await redis.xlen(keys.log(2)) == 2
    await committer.close()


async def test_an_op_kind_no_library_defines_fails_the_batch_before_any_write(redis: Redis) -> None:
    """Redis keeps a script's writes made before an error: an unknown kind is refused before the first one."""
    committer = Committer(redis)  # no op libraries: only the generic kinds exist
    state = keys.execution(3, "x")
    unit = Unit(3).event(_cancelled(1)).hset(state, {"status": "cancelled"}).op("no_such_op", "k", b"blob")
    with pytest.raises(ResponseError, match="unknown op no_such_op"):
        await committer.commit(unit)
    assert await redis.xlen(keys.log(3)) == 0
    assert await redis.exists(state) == 0
    # The same committer goes on applying generic units.
    assert isinstance(await committer.commit(Unit(3).event(_cancelled(2))), Applied)
    await committer.close()
