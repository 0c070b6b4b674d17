"""Running the robot in the test's own event loop, against a fake or a real API."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from services.robot.reconnect import Backoff
from services.robot.runner import RobotOptions, serve

FAST = Backoff(first_s=0.02, cap_s=0.1)


@dataclass
class RunningRobot:
    stop: asyncio.Event
    task: asyncio.Task[None]


@asynccontextmanager
async def robot(url: str, **options: Any) -> AsyncIterator[RunningRobot]:
    """``serve()`` of a robot for the block (fast backoff); stopped as SIGTERM would at its end."""
    stop = asyncio.Event()
    options.setdefault("backoff", FAST)
    options.setdefault("key", "orqr_test")
    running = asyncio.create_task(serve(RobotOptions(url=url, **options), stop))
    try:
        yield RunningRobot(stop, running)
    finally:
        stop.set()
        await asyncio.wait_for(running, timeout=30)
