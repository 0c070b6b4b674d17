"""One task on the robot against a scripted server: heartbeats through a long action, a 409 that stops it,
logs and progress sent by the action, failures and their kind."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import msgspec
import pytest

from services.robot.client import RobotClient, Task
from services.robot.reconnect import Reconnect
from services.robot.task import TaskRun, heartbeat_interval_s
from shared.domain.actions.runtime import Actions
from shared.domain.actions.schemas import ActionContext
from tests.helpers import assert_eventually
from tests.robots.fake_api import FakeApi, serving, task
from tests.robots.support import FAST, robot


class _NoParams(msgspec.Struct, frozen=True):
    pass


class _Reporting:
    """A plug-in that logs, reports progress and returns."""

    params: type[msgspec.Struct] = _NoParams

    async def run(self, params: Any, ctx: ActionContext) -> Any:
        await ctx.log("reading the screen")
        await ctx.progress(50, "half way")
        await asyncio.sleep(0.3)  # long enough for the progress heartbeat to go out first
        return {"attempt": ctx.attempt, "step": ctx.step_index}


class InvoiceMissing(Exception):
    kind = "business"


class _Business:
    params: type[msgspec.Struct] = _NoParams

    async def run(self, params: Any, ctx: ActionContext) -> Any:
        raise InvoiceMissing("invoice 7 does not exist")


class _Crashing:
    params: type[msgspec.Struct] = _NoParams

    async def run(self, params: Any, ctx: ActionContext) -> Any:
        found: dict[str, Any] = {}
        return found["nothing"]


async def _run_one(api: FakeApi, offered: dict[str, Any]) -> str:
    """Runs one task with the test plug-ins installed; how it ended."""
    async with serving(api) as url, RobotClient(url, "orqr_test") as client, httpx.AsyncClient() as http:
        actions = Actions(http, {"reporting": _Reporting(), "business": _Business(), "crashing": _Crashing()})
        run = TaskRun(msgspec.convert(offered, Task), client, actions, Reconnect(url, FAST), tenant_id="t1")
        return await run.run()


def test_a_heartbeat_every_third_of_the_lease() -> None:
    assert heartbeat_interval_s(60) == 20
    assert heartbeat_interval_s(0.6) == pytest.approx(0.2)


async def test_a_long_action_keeps_its_lease_then_completes() -> None:
    api = FakeApi()
    ended = await _run_one(api, task("delay", {"ms": 1500}, lease_s=0.6))
    assert ended == "completed"
    # 1.5 s at one heartbeat per 0.2 s: the lease (0.6 s) never ran out.
    assert len(api.called("heartbeat")) >= 3
    assert api.called("complete") == [{"output": {"slept_ms": 1500}}]
    assert api.called("fail") == []


async def test_logs_and_progress_reach_the_server() -> None:
    api = FakeApi(lease_s=30)
    ended = await _run_one(api, task("reporting", {}, lease_s=30))
    assert ended == "completed"
    assert api.called("logs") == [{"lines": [{"level": "info", "message": "reading the screen"}]}]
    # Progress goes at once, not at the next scheduled heartbeat (10 s away with this lease).
    assert api.called("heartbeat") == [{"progress": 50.0, "message": "half way"}]
    assert api.called("complete") == [{"output": {"attempt": 1, "step": 1}}]


async def test_a_cancelled_task_stops_at_its_next_heartbeat_and_reports_nothing() -> None:
    api = FakeApi(heartbeat_stop="cancelled")
    ended = await asyncio.wait_for(_run_one(api, task("delay", {"ms": 600_000}, lease_s=0.6)), timeout=10)
    assert ended == "stopped: cancelled"
    assert api.called("complete") == [] and api.called("fail") == []


async def test_failures_say_their_kind() -> None:
    cases = {
        "fail": ({"message": "no such invoice"}, "no such invoice", "application"),
        "business": ({}, "InvoiceMissing: invoice 7 does not exist", "business"),
        "crashing": ({}, "KeyError: 'nothing'", "application"),
        "delay": ({"ms": "soon"}, None, "application"),  # bad params
        "no_such_action": ({}, "unknown action 'no_such_action'", "application"),
    }
    for action, (params, message, kind) in cases.items():
        api = FakeApi()
        ended = await _run_one(api, task(action, params, lease_s=30))
        [failure] = api.called("fail")
        assert failure["kind"] == kind, action
        if message is not None:
            assert failure["message"] == message
        assert ended.startswith(f"failed ({kind})")
        assert api.called("complete") == []


async def test_the_robot_goes_on_with_the_next_task_after_a_stop() -> None:
    api = FakeApi(heartbeat_stop="lease_lost", tasks=[task("delay", {"ms": 600_000}, lease_s=0.6, task_id="a")])
    async with serving(api) as url, robot(url):
        await assert_eventually(lambda: _polled_after_heartbeat(api), timeout=10)
    assert api.called("complete") == [] and api.called("fail") == []


async def _polled_after_heartbeat(api: FakeApi) -> None:
    names = [name for name, _ in api.calls]
    assert "heartbeat" in names and "next" in names[names.index("heartbeat"):]
