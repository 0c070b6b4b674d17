"""Waiting out an unreachable server: capped, jittered exponential backoff, said once in the log.

The delay is a pure function of the failure count and a random draw, so it is tested without sleeping.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from services.robot.client import ServerUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Backoff:
    """Doubling delays from ``first_s``, never above ``cap_s``."""

    first_s: float = 0.5
    cap_s: float = 30.0

    def delay_s(self, failures: int, rand: float) -> float:
        """The wait after ``failures`` (>= 1) failures in a row; ``rand`` in [0, 1) spreads it over the upper half
        of the doubled delay ("equal jitter"): robots cut off together do not all come back at the same instant,
        and none retries sooner than half the schedule."""
        ceiling = min(self.cap_s, self.first_s * 2.0 ** min(max(failures, 1) - 1, 32))
        return ceiling / 2 + ceiling / 2 * rand


class Stopped(Exception):
    """The robot was told to stop while waiting to retry."""


class GaveUp(Exception):
    """Retrying would go past the deadline (a task's lease: after it the server has offered the task again)."""


class Reconnect:
    """Retries calls that failed because the server is unreachable or answered 5xx; one WARNING when it goes away,
    one INFO when it is back (several workers share one)."""

    def __init__(self, url: str, backoff: Backoff | None = None, rand: Callable[[], float] = random.random) -> None:
        self.url = url
        self.backoff = backoff or Backoff()
        self._rand = rand
        self._down = False

    async def call(self, fn: Callable[[], Awaitable[T]], *, stop: asyncio.Event | None = None,
                   deadline: float | None = None) -> T:
        """``fn()``, retried on ``ServerUnavailable``; ``Stopped`` if ``stop`` is set meanwhile, ``GaveUp`` if the
        next try would start after ``deadline`` (``time.monotonic()``)."""
        failures = 0
        while True:
            try:
                result = await fn()
            except ServerUnavailable as exc:
                failures += 1
                self._went_down(exc)
                delay = max(self.backoff.delay_s(failures, self._rand()), min(exc.retry_after_s, self.backoff.cap_s))
                if deadline is not None and time.monotonic() + delay > deadline:
                    raise GaveUp(exc.message) from exc
                await _pause(delay, stop)
                continue
            self._came_back()
            return result

    def _went_down(self, exc: ServerUnavailable) -> None:
        if not self._down:
            self._down = True
            log.warning("server %s unreachable (%s); retrying with backoff", self.url, exc.message)

    def _came_back(self) -> None:
        if self._down:
            self._down = False
            log.info("server %s reachable again", self.url)


async def _pause(delay_s: float, stop: asyncio.Event | None) -> None:
    if stop is None:
        await asyncio.sleep(delay_s)
        return
    try:
        await asyncio.wait_for(stop.wait(), timeout=delay_s)
    except TimeoutError:
        return
    raise Stopped
