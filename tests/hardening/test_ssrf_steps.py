"""SSRF for ``http_request`` steps (DESIGN §12): loopback, private, link-local and metadata addresses are
refused — a literal URL when the workflow is saved (422 naming the field), a templated one or a name that
resolves to such an address when the step runs (the step fails naming the address) — unless
``ORQ_ALLOW_PRIVATE_NETWORKS=1``. Redirects are never followed."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from shared.infra.settings import load_settings
from shared.log.events import StepCompleted, StepFailed
from tests.api.support import TenantHandle
from tests.hardening.conftest import Api
from tests.hardening.support import recording_server, wait_for_event


def _calling(url: str, **params: Any) -> dict[str, Any]:
    return {"name": "probe", "retry": {"attempts": 1},
            "steps": [{"action": "http_request", "params": {"url": url, **params}}]}


REFUSED_LITERALS = [
    "http://127.0.0.1:8000/metrics",
    "http://127.8.9.10/",
    "http://localhost:8000/",
    "http://api.localhost/",
    "http://[::1]/",
    "http://[::ffff:127.0.0.1]/",
    "http://10.1.2.3/",
    "http://172.16.0.1/",
    "http://192.168.1.1/",
    "http://[fd00::1]/",
    "http://169.254.169.254/latest/meta-data/",
    "http://[fe80::1]/",
    "http://0.0.0.0/",
    "http://224.0.0.1/",
    "http://240.0.0.1/",
    "http://2130706433/",  # 127.0.0.1 as one decimal integer
    "http://0x7f000001/",  # ... in hex
    "http://0177.0.0.1/",  # ... with an octal first part
    "http://127.1/",  # ... with parts left out
    "file:///etc/passwd",
    "gopher://127.0.0.1:6379/_FLUSHALL",
    "ftp://example.com/x",
]


@pytest.mark.parametrize("url", REFUSED_LITERALS)
async def test_a_literal_internal_url_is_refused_when_saved(api: Api, tenant: TenantHandle, url: str) -> None:
    client, _ = api
    r = await client.post("/api/workflows", json=_calling(url), headers=tenant.headers)
    assert r.status_code == 422, (url, r.text)
    error = r.json()["error"]
    assert error["field"] == "steps[0].params.url", error


@pytest.mark.parametrize("url", ["https://example.com/x", "http://93.184.216.34/", "{{ params.url }}",
                                 "http://{{ params.host }}/x"])
async def test_public_and_templated_urls_are_saved(api: Api, tenant: TenantHandle, url: str) -> None:
    client, _ = api
    r = await client.post("/api/workflows", json=_calling(url), headers=tenant.headers)
    assert r.status_code == 201, (url, r.text)


async def test_the_setting_opens_private_addresses_at_save_but_never_other_schemes(
    make_api: Callable[..., Any], tenant: TenantHandle
) -> None:
    client, _ = await make_api(allow_private_networks=True)
    ok = await client.post("/api/workflows", json=_calling("http://127.0.0.1:9/"), headers=tenant.headers)
    assert ok.status_code == 201, ok.text
    file = await client.post("/api/workflows", json=_calling("file:///etc/passwd"), headers=tenant.headers)
    assert file.status_code == 422 and file.json()["error"]["field"] == "steps[0].params.url"


async def _run(client: httpx.AsyncClient, tenant: TenantHandle, workflow: dict[str, Any],
               params: dict[str, Any]) -> str:
    saved = await client.post("/api/workflows", json=workflow, headers=tenant.headers)
    assert saved.status_code == 201, saved.text
    r = await client.post(f"/api/workflows/{saved.json()['id']}/execute", json={"params": params},
                          headers=tenant.headers)
    assert r.status_code == 202, r.text
    return str(r.json()["execution_id"])


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "2130706433"])
async def test_a_templated_url_to_loopback_fails_the_step_without_a_request(
    api: Api, tenant: TenantHandle, redis: Redis, start_executor: Callable[..., Any], host: str
) -> None:
    client, _ = api
    start_executor(allow_private=False)
    with recording_server() as server:
        url = server.url.replace("127.0.0.1", host)
        execution_id = await _run(client, tenant, _calling("{{ params.url }}"), {"url": url})
        failed = await wait_for_event(redis, tenant.partition, execution_id, StepFailed)
        assert isinstance(failed, StepFailed)
        assert "loopback" in failed.error and "ORQ_ALLOW_PRIVATE_NETWORKS" in failed.error, failed.error
        assert server.hits == [], "the address is checked before connecting"


async def test_the_metadata_address_from_params_fails_the_step(
    api: Api, tenant: TenantHandle, redis: Redis, start_executor: Callable[..., Any]
) -> None:
    client, _ = api
    start_executor(allow_private=False)
    execution_id = await _run(client, tenant, _calling("http://{{ params.host }}/latest/meta-data/",
                                                       timeout_s=2), {"host": "169.254.169.254"})
    failed = await wait_for_event(redis, tenant.partition, execution_id, StepFailed)
    assert isinstance(failed, StepFailed) and "link-local" in failed.error, failed.error


async def test_with_the_setting_steps_reach_local_servers_and_redirects_are_not_followed(
    api: Api, tenant: TenantHandle, redis: Redis, start_executor: Callable[..., Any]
) -> None:
    client, _ = api
    start_executor(allow_private=True)
    with recording_server(302, location="http://169.254.169.254/latest/meta-data/") as server:
        workflow = _calling("{{ params.url }}", method="POST", json={"n": 1}, headers={"X-Probe": "1"})
        execution_id = await _run(client, tenant, workflow, {"url": server.url})
        done = await wait_for_event(redis, tenant.partition, execution_id, StepCompleted)
    assert isinstance(done, StepCompleted)
    assert done.output["status"] == 302, "a redirect is the step's answer, never followed"
    assert server.hits == [("POST", "/probe")]


def test_the_setting_and_its_old_alias_open_steps_and_notifications() -> None:
    for name in ("ORQ_ALLOW_PRIVATE_NETWORKS", "ORQ_ALLOW_PRIVATE_WEBHOOKS"):
        settings = load_settings({name: "1"})
        assert settings.allow_private_networks and settings.allow_private_webhooks, name
    closed = load_settings({})
    assert not closed.allow_private_networks and not closed.allow_private_webhooks


async def test_an_unresolvable_name_fails_the_step(
    api: Api, tenant: TenantHandle, redis: Redis, start_executor: Callable[..., Any]
) -> None:
    client, _ = api
    start_executor(allow_private=False)
    execution_id = await _run(client, tenant, _calling("{{ params.url }}"), {"url": "http://no-such-host.invalid/"})
    failed = await asyncio.wait_for(wait_for_event(redis, tenant.partition, execution_id, StepFailed), 20)
    assert isinstance(failed, StepFailed) and "no-such-host.invalid" in failed.error


async def test_steps_keep_no_cookies_between_requests(
    make_api: Callable[..., Any], tenant: TenantHandle, redis: Redis, start_executor: Callable[..., Any]
) -> None:
    # One HTTP client serves every tenant's steps: a cookie one step received must not go with the next.
    client, _ = await make_api(allow_private_networks=True)
    start_executor(allow_private=True)
    with recording_server(set_cookie="session=tenant-a-secret; Path=/") as server:
        for _ in range(2):
            execution_id = await _run(client, tenant, _calling(server.url), {})
            await wait_for_event(redis, tenant.partition, execution_id, StepCompleted)
    assert len(server.hits) == 2 and server.cookies == ["", ""], server.cookies
