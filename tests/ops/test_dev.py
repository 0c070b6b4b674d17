"""``orq dev`` as a newcomer meets it: one process, an embedded Redis, SQLite; what it prints works."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.helpers import assert_eventually, free_port
from tests.processes import OrqProcess, dev_banner, orq_env


def _dev(tmp_path: Path, port: int, smtp_port: int, name: str) -> OrqProcess:
    env = orq_env(ORQ_SMTP_PORT=str(smtp_port))
    del env["ORQ_ADMIN_TOKEN"]  # orq dev makes its own and keeps it in the data folder
    return OrqProcess(["dev", "--port", str(port), "--data-dir", str(tmp_path / "data")], env,
                      tmp_path / f"{name}.log")


async def test_what_orq_dev_prints_runs_a_workflow_and_survives_a_restart(tmp_path: Path) -> None:
    port, smtp_port = free_port(), free_port()
    first = _dev(tmp_path, port, smtp_port, "first")
    try:
        printed = await dev_banner(first)
        base = f"http://127.0.0.1:{port}"
        assert printed["dashboard"] == f"{base}/"
        key = printed["demo key"]
        execute_url = printed["try"].split()[-1]
        assert execute_url.startswith(f"{base}/api/workflows/") and execute_url.endswith("/execute")
        async with httpx.AsyncClient(timeout=10) as client:
            page = await client.get(printed["dashboard"])
            assert page.status_code == 200 and "text/html" in page.headers["content-type"]
            auth = {"Authorization": f"Bearer {key}"}
            queued = await client.post(execute_url, json={"params": {"name": "Ada"}}, headers=auth)
            assert queued.status_code == 202, queued.text
            execution_id = queued.json()["execution_id"]

            async def completed() -> None:
                reply = await client.get(f"{base}/api/executions/{execution_id}", headers=auth)
                assert reply.status_code == 200, reply.text  # 404 until the projector has written it
                body = reply.json()
                assert body["status"] == "completed", body
                assert [s["status"] for s in body["steps"]] == ["completed"] * 3

            await assert_eventually(completed, timeout=30, message="the demo workflow completed")
    finally:
        assert first.terminate() == 0, first.output()

    second = _dev(tmp_path, port, smtp_port, "second")
    try:
        again = await dev_banner(second)
        assert again["demo key"] == key and again["admin token"] == printed["admin token"]
        async with httpx.AsyncClient(timeout=10) as client:
            seen = await client.get(f"{base}/api/executions/{execution_id}", headers={"Authorization": f"Bearer {key}"})
            assert seen.status_code == 200 and seen.json()["status"] == "completed"
    finally:
        assert second.terminate() == 0, second.output()
