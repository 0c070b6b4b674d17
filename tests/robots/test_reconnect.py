"""Backoff: the schedule as a pure function, and the robot waiting out a server that answers 503."""

from __future__ import annotations

import pytest

from services.robot.reconnect import Backoff
from tests.helpers import assert_eventually, free_port
from tests.robots.fake_api import FakeApi, serving, task
from tests.robots.support import robot


def test_delays_double_up_to_the_cap() -> None:
    backoff = Backoff(first_s=0.5, cap_s=30)
    assert [backoff.delay_s(n, rand=0.999999) for n in range(1, 9)] == pytest.approx(
        [0.5, 1, 2, 4, 8, 16, 30, 30], rel=1e-5)
    assert backoff.delay_s(10_000, rand=0.5) <= 30


@pytest.mark.parametrize("failures", [1, 3, 7, 50])
def test_jitter_stays_in_the_upper_half(failures: int) -> None:
    backoff = Backoff(first_s=0.5, cap_s=30)
    full = min(30, 0.5 * 2 ** (failures - 1))
    delays = [backoff.delay_s(failures, rand=r / 10) for r in range(10)]
    assert all(full / 2 <= d <= full for d in delays)
    assert len(set(delays)) == 10  # spread: robots cut off together do not come back together


async def test_503s_are_waited_out_then_the_task_is_done() -> None:
    api = FakeApi(unavailable=2, tasks=[task("set", {"values": {"total": 42}})])
    async with serving(api) as url, robot(url):

        async def completed() -> None:
            assert api.called("complete") == [{"output": {"total": 42}}]

        await assert_eventually(completed, timeout=10)
    assert [name for name, _ in api.calls[:3]] == ["me", "me", "me"]  # two 503s, then the identity


async def test_a_server_that_comes_up_late_is_connected_to() -> None:
    api = FakeApi(tasks=[task("noop", {})])
    port = free_port()
    async with robot(f"http://127.0.0.1:{port}"):
        async with serving(api, port=port):

            async def completed() -> None:
                assert api.called("complete") == [{"output": None}]

            await assert_eventually(completed, timeout=10)
