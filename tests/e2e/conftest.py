"""A whole deployment in real processes: ``orq api``, ``orq executor`` ×2 and ``orq projector``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.helpers import REDIS_URL, free_port
from tests.processes import OrqProcess, orq_env, orq_processes, wait_ready

ADMIN = "e2e-admin-token"


@dataclass
class Deployment:
    base_url: str
    env: dict[str, str]
    processes: list[OrqProcess]
    tmp: Path

    def start(self, *args: str, name: str) -> OrqProcess:
        process = OrqProcess(list(args), self.env, self.tmp / f"{name}.log")
        self.processes.append(process)
        return process


@pytest.fixture
def deployment(database_url: str, redis: object, tmp_path: Path) -> Iterator[Deployment]:
    port = free_port()
    # Private networks open: http_request steps of these tests call servers on 127.0.0.1 (the dashboard's robot).
    env = orq_env(ORQ_REDIS_URL=REDIS_URL, ORQ_DATABASE_URL=database_url, ORQ_ADMIN_TOKEN=ADMIN,
                  ORQ_PARTITIONS="4", ORQ_EXECUTOR_CONCURRENCY="5", ORQ_LEASE_SECONDS="5",
                  ORQ_ALLOW_PRIVATE_NETWORKS="1")
    with orq_processes() as procs:
        d = Deployment(f"http://127.0.0.1:{port}", env, procs, tmp_path)
        d.start("api", "--port", str(port), name="api")
        d.start("executor", name="executor-1")
        d.start("executor", name="executor-2")
        d.start("projector", name="projector")
        wait_ready(d.base_url, procs[0])
        yield d


@pytest.fixture
async def admin(deployment: Deployment) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=deployment.base_url, timeout=10,
                                 headers={"Authorization": f"Bearer {ADMIN}"}) as client:
        yield client


@pytest.fixture
async def tenant(deployment: Deployment, admin: httpx.AsyncClient) -> AsyncIterator[httpx.AsyncClient]:
    created = await admin.post("/api/tenants", json={"name": "acme", "plan": "enterprise"})
    assert created.status_code == 201, created.text
    key = created.json()["api_key"]
    async with httpx.AsyncClient(base_url=deployment.base_url, timeout=10,
                                 headers={"Authorization": f"Bearer {key}"}) as client:
        yield client
