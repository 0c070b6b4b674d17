"""``orq dev`` opens private networks (``ORQ_ALLOW_PRIVATE_NETWORKS``) and says so: a newcomer's
``http_request`` step to a server on their own machine is saved and runs."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

from tests.hardening.support import recording_server
from tests.helpers import free_port
from tests.processes import OrqProcess, dev_banner, orq_env, orq_processes


async def test_orq_dev_opens_private_networks_and_says_so(tmp_path: Path) -> None:
    port = free_port()
    env = orq_env(ORQ_SMTP_PORT=str(free_port()))
    del env["ORQ_ADMIN_TOKEN"]
    with orq_processes() as procs, recording_server() as server:
        procs.append(OrqProcess(["dev", "--port", str(port), "--data-dir", str(tmp_path / "data")], env,
                                tmp_path / "dev.log"))
        printed = await dev_banner(procs[0])
        assert "ORQ_ALLOW_PRIVATE_NETWORKS=1" in printed["network"], printed
        headers = {"Authorization": f"Bearer {printed['demo key']}"}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=10) as client:
            saved = await client.post("/api/workflows", json={"name": "local", "retry": {"attempts": 1}, "steps": [
                {"action": "http_request", "params": {"url": server.url}}]})
            assert saved.status_code == 201, saved.text
            run = await client.post(f"/api/workflows/{saved.json()['id']}/execute", json={})
            execution_id = run.json()["execution_id"]
            deadline = time.monotonic() + 30
            while (status := (await client.get(f"/api/executions/{execution_id}")).json().get("status")) not in (
                    "completed", "failed"):
                assert time.monotonic() < deadline, status
                await asyncio.sleep(0.2)
            detail = (await client.get(f"/api/executions/{execution_id}")).json()
        assert status == "completed", detail
        assert detail["steps"][0]["output_data"]["status"] == 200 and server.hits == [("GET", "/probe")]
