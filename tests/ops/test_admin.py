"""``orq status``, ``orq dlq``, ``orq events tail`` and notifications against a real deployment (processes)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Deployment
from tests.helpers import assert_eventually
from tests.notifier.support import valid_signature, webhook_server
from tests.processes import ROOT

pytestmark = pytest.mark.slow

SECRET = "e2e-signing-secret"


def orq(deployment: Deployment, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "orquesta", *args], env=deployment.env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def json_lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


async def test_dead_letters_notify_and_are_handled_in_bulk_from_the_cli(
    deployment: Deployment, tenant: httpx.AsyncClient
) -> None:
    deployment.env["ORQ_ALLOW_PRIVATE_WEBHOOKS"] = "1"  # the receiver below listens on 127.0.0.1
    deployment.start("notifier", name="notifier")
    with webhook_server(200) as server:
        flaky = await tenant.post("/api/workflows", json={
            "name": "flaky", "steps": [{"action": "fail", "params": {"message": "boom: upstream down"}}],
            "retry": {"attempts": 1},
            "notify": [{"on": ["dead_lettered"], "webhook": server.url, "secret": SECRET}],
        })
        assert flaky.status_code == 201, flaky.text
        fine = await tenant.post("/api/workflows", json={"name": "fine", "steps": [{"action": "fail",
                                                                                      "params": {"message": "other"}}],
                                                          "retry": {"attempts": 1}})
        workflow_id, other_id = flaky.json()["id"], fine.json()["id"]
        ids = [(await tenant.post(f"/api/workflows/{workflow_id}/execute")).json()["execution_id"] for _ in range(3)]
        other = (await tenant.post(f"/api/workflows/{other_id}/execute")).json()["execution_id"]

        async def all_dead_lettered() -> None:
            dlq = (await tenant.get("/api/dlq")).json()["items"]
            assert {i["id"] for i in dlq} == {*ids, other}

        await assert_eventually(all_dead_lettered, timeout=30)

        # Every dead-lettered run of "flaky" was announced, signed; none of "fine" (it has no notify).
        await assert_eventually(lambda: _received(server, 3), timeout=20)
        assert all(valid_signature(SECRET, r) for r in server.requests)
        assert {json.loads(r.body)["execution_id"] for r in server.requests} == set(ids)
        assert {r.headers["x-orquesta-event"] for r in server.requests} == {"execution.dead_lettered"}

        async def listed() -> list[dict[str, Any]]:
            items = (await tenant.get("/api/notifications", params={"execution_id": ids[0]})).json()["items"]
            assert [i["status"] for i in items] == ["sent"]
            return list(items)

        [note] = await assert_eventually(listed, timeout=20)
        assert note["trigger"] == "dead_lettered" and note["attempts"] == 1 and note["target"] == server.url
        resent = await tenant.post(f"/api/notifications/{note['id']}/resend")
        assert resent.status_code == 202, resent.text
        await assert_eventually(lambda: _received(server, 4), timeout=20)
        assert server.requests[-1].headers["x-orquesta-delivery"] == note["id"]
        assert server.requests[-1].headers["x-orquesta-attempt"] == "2"

        async def resent_listed() -> None:
            [item] = (await tenant.get("/api/notifications", params={"execution_id": ids[0]})).json()["items"]
            assert item["status"] == "sent" and item["attempts"] == 2

        await assert_eventually(resent_listed, timeout=20)
        unknown = await tenant.post("/api/notifications/" + "0" * 32 + "/resend")
        assert unknown.status_code == 404

    status = orq(deployment, "status", "--json")
    assert status.returncode == 0, status.stderr
    partitions = json.loads(status.stdout)["partitions"]
    assert sum(p["dlq"] for p in partitions) == 4
    groups = {g["name"] for p in partitions for g in p["groups"] if g["stream"] == "log"}
    assert {"projector", "notifier"} <= groups

    listed_cli = orq(deployment, "dlq", "list", "--json", "--workflow", workflow_id)
    assert listed_cli.returncode == 0, listed_cli.stderr
    assert {i["execution_id"] for i in json_lines(listed_cli.stdout)} == set(ids)
    refused = orq(deployment, "dlq", "purge")
    assert refused.returncode == 2 and "--all" in refused.stderr
    dry = orq(deployment, "dlq", "purge", "--error", "UPSTREAM", "--dry-run", "--json")
    assert len(json_lines(dry.stdout)) == 3

    retried = orq(deployment, "dlq", "retry", "--error", "upstream down", "--limit", "1", "--json")
    assert retried.returncode == 0, retried.stderr
    [one] = json_lines(retried.stdout)
    purged = orq(deployment, "dlq", "purge", "--workflow", other_id, "--json")
    assert [i["execution_id"] for i in json_lines(purged.stdout)] == [other]

    async def dlq_after() -> None:
        remaining = {i["id"] for i in (await tenant.get("/api/dlq")).json()["items"]}
        assert other not in remaining
        execution = (await tenant.get(f"/api/executions/{one['execution_id']}")).json()
        assert execution["retry_count"] >= 0 and execution["attempt"] == 1
        assert execution["status"] in {"queued", "running", "failed"}

    await assert_eventually(dlq_after, timeout=20)

    events = orq(deployment, "events", "tail", "--since", "0", "--no-follow", "--type", "execution.requeued")
    assert events.returncode == 0, events.stderr
    [requeued] = json_lines(events.stdout)
    assert requeued["aggregate_id"] == one["execution_id"] and requeued["data"]["reason"] == "dlq_retry"


async def _received(server: Any, n: int) -> bool:
    await asyncio.sleep(0)
    assert len(server.requests) >= n, len(server.requests)
    return True
