"""A whole deployment in real processes (``orq api``, ``orq executor``, ``orq projector``) for ``orq robot``
processes to work for; robot leases short, so a task given back is offered again within seconds."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Deployment
from tests.helpers import REDIS_URL, free_port
from tests.processes import orq_env, orq_processes, wait_ready

ADMIN = "robots-admin-token"
ROBOT_LEASE_S = 3


@pytest.fixture
def deployment(sqlite_url: str, redis: object, tmp_path: Path) -> Iterator[Deployment]:
    port = free_port()
    env = orq_env(ORQ_REDIS_URL=REDIS_URL, ORQ_DATABASE_URL=sqlite_url, ORQ_ADMIN_TOKEN=ADMIN,
                  ORQ_PARTITIONS="4", ORQ_EXECUTOR_CONCURRENCY="5", ORQ_LEASE_SECONDS="5",
                  ORQ_ROBOT_LEASE_S=str(ROBOT_LEASE_S))
    with orq_processes() as procs:
        d = Deployment(f"http://127.0.0.1:{port}", env, procs, tmp_path)
        d.start("api", "--port", str(port), name="api")
        d.start("executor", name="executor")
        d.start("projector", name="projector")
        wait_ready(d.base_url, procs[0])
        yield d


@pytest.fixture
async def tenant(deployment: Deployment) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=deployment.base_url, timeout=10) as admin:
        created = await admin.post("/api/tenants", json={"name": "acme", "plan": "enterprise"},
                                   headers={"Authorization": f"Bearer {ADMIN}"})
    assert created.status_code == 201, created.text
    async with httpx.AsyncClient(base_url=deployment.base_url, timeout=10,
                                 headers={"Authorization": f"Bearer {created.json()['api_key']}"}) as client:
        yield client
