"""``orq api --workers N``: N real API processes on one port, each naming itself in ``X-Orq-Worker``; SIGTERM to
the parent stops them all; a worker killed later is replaced; a busy port is refused."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from services.api.server import MIN_UPTIME_S, WORKER_HEADER
from tests.helpers import REDIS_URL, assert_eventually, free_port, until_answering
from tests.processes import OrqProcess, orq_env

pytestmark = pytest.mark.slow
ADMIN = {"Authorization": "Bearer test-admin"}
REQUESTS = 60


def _env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    return orq_env(ORQ_REDIS_URL=REDIS_URL, ORQ_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/orq.db", **overrides)


@pytest.fixture
def port() -> int:
    return free_port()


StartApi = Callable[..., OrqProcess]


@pytest.fixture
def start_api(tmp_path: Path, port: int) -> Iterator[StartApi]:
    """Starts ``orq api --port <port> <args>`` with ``env`` added to the test environment; stopped at the end."""
    started: list[OrqProcess] = []

    def start(*args: str, **env: str) -> OrqProcess:
        log = tmp_path / f"api-{len(started)}.log"
        started.append(OrqProcess(["api", "--port", str(port), *args], _env(tmp_path, **env), log))
        return started[-1]

    yield start
    for process in started:
        process.terminate()


def _parent_of(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except FileNotFoundError:
        return None


def _age_s(pid: int) -> float:
    """Seconds since ``pid`` started (proc(5): field 22 of its stat, in clock ticks since boot)."""
    started = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
    return float(Path("/proc/uptime").read_text().split()[0]) - started


def _alive(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


async def _ready(api: OrqProcess, base: str) -> None:
    await until_answering(f"{base}/readyz", api, timeout=30, message="orq api ready")


def _fresh_connections(base: str) -> httpx.AsyncClient:
    """A client opening a new connection for every request: the kernel picks a worker per connection."""
    return httpx.AsyncClient(base_url=base, limits=httpx.Limits(max_keepalive_connections=0))


async def _execute_many(base: str) -> tuple[dict[str, int], set[str]]:
    """A tenant and a workflow, then ``REQUESTS`` single executes: replies by worker pid, and the execution ids."""
    async with _fresh_connections(base) as client:
        tenant = (await client.post("/api/tenants", json={"name": "w", "plan": "pro"}, headers=ADMIN)).json()
        auth = {"Authorization": f"Bearer {tenant['api_key']}"}
        workflow = (await client.post("/api/workflows", json={"name": "noop", "steps": [{"action": "noop"}]},
                                      headers=auth)).json()
        by_worker: dict[str, int] = {}
        ids = set()
        for _ in range(REQUESTS):
            reply = await client.post(f"/api/workflows/{workflow['id']}/execute", json={}, headers=auth)
            assert reply.status_code == 202, reply.text
            ids.add(reply.json()["execution_id"])
            worker = reply.headers[WORKER_HEADER]
            by_worker[worker] = by_worker.get(worker, 0) + 1
    return by_worker, ids


async def _workers_answering(base: str, requests: int = 40) -> set[int]:
    async with _fresh_connections(base) as client:
        replies = [await client.get("/healthz") for _ in range(requests)]
    assert all(r.status_code == 200 for r in replies)
    return {int(r.headers[WORKER_HEADER]) for r in replies}


async def _both_answering(base: str) -> set[int]:
    """The two workers' pids, once both answer (each starts listening when its own startup is done)."""
    answering = await _workers_answering(base)
    assert len(answering) == 2, answering
    return answering


async def test_two_workers_share_the_port_and_sigterm_stops_both(start_api: StartApi, port: int) -> None:
    api = start_api("--workers", "2")
    base = f"http://127.0.0.1:{port}"
    await _ready(api, base)
    await assert_eventually(lambda: _both_answering(base), timeout=30, message="both workers listening")

    by_worker, ids = await _execute_many(base)

    # Both processes answered, each a child of `orq api`: one tenant key, created through one of them, works at both.
    assert len(by_worker) == 2, by_worker
    pids = {int(pid) for pid in by_worker}
    assert {_parent_of(pid) for pid in pids} == {api.pid}
    assert api.pid not in pids
    assert len(ids) == REQUESTS
    assert sum(by_worker.values()) == REQUESTS

    assert api.terminate() == 0, api.output()
    assert not any(_alive(pid) for pid in pids), api.output()
    assert api.output().count("api stopped") == 2  # each worker drained and closed its clients
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient() as client:
            await client.get(f"{base}/healthz")


async def test_a_worker_killed_later_is_replaced(start_api: StartApi, port: int) -> None:
    api = start_api(ORQ_API_WORKERS="2")
    base = f"http://127.0.0.1:{port}"
    await _ready(api, base)
    first = await assert_eventually(lambda: _both_answering(base), timeout=30, message="two, from ORQ_API_WORKERS")
    victim = min(first)
    # A worker that dies within MIN_UPTIME_S of its start counts as failing at start (the API stops instead).
    await asyncio.sleep(max(0.0, MIN_UPTIME_S + 0.5 - _age_s(victim)))

    os.kill(victim, signal.SIGKILL)

    async def gone() -> None:
        assert not _alive(victim)

    await assert_eventually(gone, timeout=10, message="the killed worker gone")  # its socket closed with it
    assert victim not in await _workers_answering(base)  # every request answered, by the other worker

    async def replaced() -> set[int]:
        answering = await _both_answering(base)
        assert victim not in answering, answering
        return answering

    now = await assert_eventually(replaced, timeout=30, message="a new worker in place of the killed one")
    assert len(now & first) == 1  # the survivor, and a new process
    assert {_parent_of(pid) for pid in now} == {api.pid}
    assert "exited with -9; starting another" in api.output()
    assert api.process.poll() is None


async def test_workers_stop_when_their_parent_is_killed(start_api: StartApi, port: int) -> None:
    api = start_api("--workers", "2")
    base = f"http://127.0.0.1:{port}"
    await _ready(api, base)
    pids = await assert_eventually(lambda: _both_answering(base), timeout=30, message="both workers listening")

    api.kill9()

    async def stopped() -> None:
        assert not any(_alive(pid) for pid in pids)

    await assert_eventually(stopped, timeout=30, message="orphaned workers stopped")
    assert api.output().count("is gone; stopping") == 2


async def test_one_worker_by_default_and_a_busy_port_is_refused(start_api: StartApi, port: int) -> None:
    api = start_api()
    base = f"http://127.0.0.1:{port}"
    await _ready(api, base)
    async with httpx.AsyncClient() as client:
        reply = await client.get(f"{base}/healthz")
    assert WORKER_HEADER.lower() not in reply.headers  # one process, as before: no worker to name

    second = start_api("--workers", "2")
    assert second.process.wait(timeout=30) == 2, second.output()
    assert f"orq: 127.0.0.1:{port} is in use" in second.output()
    async with httpx.AsyncClient() as client:
        assert (await client.get(f"{base}/healthz")).status_code == 200
