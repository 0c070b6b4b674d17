"""The robot's loop against a scripted server: the ``--pool`` check, and the drain on stop (SIGTERM)."""

from __future__ import annotations

import asyncio

import pytest

from services.robot.runner import RobotOptions, serve
from shared.infra.errors import ConfigError
from tests.helpers import assert_always, assert_eventually
from tests.robots.fake_api import FakeApi, serving, task
from tests.robots.support import FAST


async def test_a_pool_that_is_not_the_robots_is_refused() -> None:
    async with serving(FakeApi()) as url:
        with pytest.raises(ConfigError, match="is in pool 'desktop', not 'mainframe'"):
            await serve(RobotOptions(url=url, key="orqr_test", pool="mainframe", backoff=FAST), asyncio.Event())


async def _started_task(api: FakeApi, url: str, grace_s: float) -> tuple[asyncio.Event, asyncio.Task[None]]:
    stop = asyncio.Event()
    running = asyncio.create_task(serve(RobotOptions(url=url, key="orqr_test", grace_s=grace_s, backoff=FAST), stop))

    async def heartbeating() -> None:
        assert api.called("heartbeat")

    await assert_eventually(heartbeating, timeout=10)
    return stop, running


async def test_stop_lets_the_running_task_finish_within_the_grace() -> None:
    api = FakeApi(tasks=[task("delay", {"ms": 1000}), task("noop", {}, task_id="second")])
    async with serving(api) as url:
        stop, running = await _started_task(api, url, grace_s=30)
        stop.set()
        await asyncio.wait_for(running, timeout=30)
    assert api.called("complete") == [{"output": {"slept_ms": 1000}}]
    assert len(api.tasks) == 1  # the second task was not taken: stopping robots take nothing new


async def test_a_task_still_running_after_the_grace_is_given_back_unreported() -> None:
    api = FakeApi(tasks=[task("delay", {"ms": 600_000})])
    async with serving(api) as url:
        stop, running = await _started_task(api, url, grace_s=0.3)
        stop.set()
        await asyncio.wait_for(running, timeout=30)
        beats = len(api.called("heartbeat"))

        async def silent() -> None:
            assert len(api.called("heartbeat")) == beats

        await assert_always(silent, duration=0.5, message="a stopped robot sends no heartbeat")
    assert api.called("complete") == [] and api.called("fail") == []
