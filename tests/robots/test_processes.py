"""``orq robot`` as a real process working for a real deployment: a ``runs_on`` step done on the robot, SIGTERM
in the middle of a task, a server that is down when the robot starts, and a wrong ``--pool``."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Deployment
from tests.e2e.test_pipeline import create_workflow, execute, wait_for
from tests.helpers import assert_eventually, free_port
from tests.processes import OrqProcess, wait_ready

pytestmark = pytest.mark.slow
POOL = "desktop"


async def register(tenant: httpx.AsyncClient, name: str = "bot-1", pool: str = POOL) -> str:
    response = await tenant.post("/api/robots", json={"name": name, "pool": pool})
    assert response.status_code == 201, response.text
    return str(response.json()["robot_key"])


def start_robot(deployment: Deployment, key: str, *args: str, name: str = "robot", url: str | None = None
                ) -> OrqProcess:
    return deployment.start("robot", "--url", url or deployment.base_url, "--key", key, *args, name=name)


def long_task_workflow(ms: int) -> dict[str, Any]:
    return {"name": f"long-{ms}", "steps": [
        {"action": "delay", "label": "type invoice", "runs_on": POOL, "params": {"ms": ms}},
        {"action": "set", "label": "after", "params": {"values": {"slept": "{{ steps.0.output.slept_ms }}"}}},
    ]}


async def wait_robot_busy(tenant: httpx.AsyncClient) -> None:
    async def busy() -> None:
        items = (await tenant.get("/api/robots")).json()["items"]
        assert any(robot["status"] == "busy" for robot in items), items

    await assert_eventually(busy, timeout=30, message="a robot took the task")


def info_lines(robot: OrqProcess, word: str) -> list[str]:
    return [line for line in robot.output().splitlines() if " INFO " in line and word in line]


async def test_a_runs_on_step_is_done_by_the_robot_and_its_output_feeds_the_next_step(
        deployment: Deployment, tenant: httpx.AsyncClient) -> None:
    robot = start_robot(deployment, await register(tenant), "--pool", POOL)
    workflow_id = await create_workflow(tenant, {"name": "invoice", "steps": [
        {"action": "set", "label": "read screen", "runs_on": POOL,
         "params": {"values": {"total": "{{ params.total }}"}}},
        {"action": "set", "label": "book", "params": {"values": {"booked": "{{ steps.0.output.total }}"}}},
    ]})
    execution_id = await execute(tenant, workflow_id, params={"total": 42})
    body = await wait_for(tenant, execution_id, "completed")
    assert [s["output_data"] for s in body["steps"]] == [{"total": 42}, {"booked": 42}]
    assert body["result"] == {"booked": 42}
    assert len(info_lines(robot, "completed")) == 1  # quiet: one line per task
    assert robot.terminate() == 0


async def test_sigterm_mid_task_finishes_it_then_exits_0(deployment: Deployment, tenant: httpx.AsyncClient) -> None:
    robot = start_robot(deployment, await register(tenant))
    execution_id = await execute(tenant, await create_workflow(tenant, long_task_workflow(2000)))
    await wait_robot_busy(tenant)
    assert robot.terminate(timeout=30) == 0
    assert len(info_lines(robot, "completed")) == 1, robot.output()
    body = await wait_for(tenant, execution_id, "completed")
    assert body["steps"][1]["output_data"] == {"slept": 2000}


async def test_a_task_past_the_grace_is_given_back_and_done_by_another_robot(
        deployment: Deployment, tenant: httpx.AsyncClient) -> None:
    first = start_robot(deployment, await register(tenant), "--grace", "0.5", name="robot-1")
    execution_id = await execute(tenant, await create_workflow(tenant, long_task_workflow(4000)))
    await wait_robot_busy(tenant)
    assert first.terminate(timeout=30) == 0
    assert "given back" in first.output()
    second = start_robot(deployment, await register(tenant, "bot-2"), name="robot-2")
    # Offered again once the first robot's lease runs out (ORQ_ROBOT_LEASE_S=3), and done by the second.
    body = await wait_for(tenant, execution_id, "completed", timeout=60)
    assert body["steps"][0]["output_data"] == {"slept_ms": 4000}
    assert len(info_lines(second, "completed")) == 1, second.output()
    assert second.terminate() == 0


async def test_a_robot_started_before_its_server_connects_when_it_comes_up(
        deployment: Deployment, tenant: httpx.AsyncClient) -> None:
    key = await register(tenant)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    robot = start_robot(deployment, key, url=url)

    async def retrying() -> None:
        assert "unreachable" in robot.output()

    await assert_eventually(retrying, timeout=30, message="the robot says the server is unreachable")
    assert robot.process.poll() is None  # still trying
    deployment.start("api", "--port", str(port), name="api-late")
    wait_ready(url)
    await assert_eventually(lambda: _connected(robot), timeout=60, message="the robot connected")
    execution_id = await execute(tenant, await create_workflow(tenant, long_task_workflow(10)))
    await wait_for(tenant, execution_id, "completed")
    assert robot.terminate() == 0


async def _connected(robot: OrqProcess) -> None:
    assert "connected to" in robot.output()


async def test_a_wrong_pool_exits_2_with_one_line(deployment: Deployment, tenant: httpx.AsyncClient) -> None:
    robot = start_robot(deployment, await register(tenant), "--pool", "mainframe")
    assert robot.process.wait(timeout=30) == 2
    lines = robot.output().strip().splitlines()
    assert lines == ["orq: this key's robot, 'bot-1', is in pool 'desktop', not 'mainframe' (--pool)"]
