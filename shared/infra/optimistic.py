"""Optimistic concurrency: read the state, commit a unit guarded on what was read, and when a guard refuses
because the state moved meanwhile, decide again on a fresh read, a bounded number of times.

Every command on an aggregate (cancel an execution, save a workflow, fire a trigger, settle a queue item)
follows that loop; this module is its one implementation. An attempt returns its result, or :data:`MOVED`
when its unit was refused because the state it read is no longer current. Refusals that a fresh read would
not change (a 404, a name taken) are the attempt's to raise or return: only ``MOVED`` reads again.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

T = TypeVar("T")

# Enough for the races seen in practice (two writers on one aggregate); a bound, because an aggregate that
# keeps moving faster than we read it is better answered "try again" than chased forever.
ATTEMPTS: Final = 3


class Moved(enum.Enum):
    """The state moved between an attempt's read and its commit: read again."""

    MOVED = "moved"


MOVED: Final = Moved.MOVED


async def optimistically(
    attempt: Callable[[], Awaitable[T | Moved]],
    *,
    exhausted: BaseException | Callable[[], Awaitable[T]],
    attempts: int = ATTEMPTS,
) -> T:
    """Run ``attempt`` until it returns something other than :data:`MOVED`, at most ``attempts`` times.

    When every attempt saw the state move, ``exhausted`` decides: an exception is raised, a callable's
    result is returned (it may raise too, e.g. a 409 naming the status a last read finds).
    """
    if attempts < 1:
        raise ValueError("attempts: at least 1")
    for _ in range(attempts):
        result = await attempt()
        if not isinstance(result, Moved):
            return result
    if isinstance(exhausted, BaseException):
        raise exhausted
    return await exhausted()
