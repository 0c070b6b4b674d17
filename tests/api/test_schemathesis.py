"""Property-based fuzzing of the whole API from its own ``/openapi.json`` (schemathesis).

The real server runs (``serve()``, uvicorn on a socket); schemathesis drives it from a worker thread with
generated requests, every one authenticated as a tenant. Checked: no 5xx ever, every status code is one the
document lists, and every response body fits its schema. Path ids are sometimes real (so success paths are
fuzzed too), sometimes random. Bounded to a few examples per operation to stay well under a minute.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis.errors import Unsatisfiable
from redis.asyncio import Redis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from services.api.server import serve
from shared.domain import commit_script
from shared.infra.settings import Settings
from shared.log import keys
from tests.api.support import NOOP_WORKFLOW, TenantHandle, admin_headers, mark_failed
from tests.helpers import free_port, until_answering

POSITIVE_EXAMPLES = 15
NEGATIVE_EXAMPLES = 8
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@dataclass(frozen=True)
class Live:
    base: str
    tenant: TenantHandle
    ids: dict[tuple[str, str], dict[str, str]]  # (method, path prefix) -> path parameters that exist


@pytest.fixture
async def live(settings: Settings, redis: Redis) -> AsyncIterator[Live]:
    port = free_port()
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, stop, "127.0.0.1", port))
    base = f"http://127.0.0.1:{port}"
    committer = commit_script.committer(redis)
    try:
        await until_answering(f"{base}/healthz", task, message="api listening")
        async with httpx.AsyncClient(base_url=base) as c:
            r = await c.post("/api/tenants", json={"name": "fuzz", "plan": "pro"}, headers=admin_headers(settings))
            body = r.json()
            tenant = TenantHandle(body["id"], body["api_key"], "pro", keys.partition_of(body["id"], 4))
            wf = (await c.post("/api/workflows", json=NOOP_WORKFLOW, headers=tenant.headers)).json()
            doomed = (await c.post("/api/workflows", json=NOOP_WORKFLOW, headers=tenant.headers)).json()
            run = await c.post(f"/api/workflows/{wf['id']}/execute", headers=tenant.headers)
            dead = await c.post(f"/api/workflows/{wf['id']}/execute", headers=tenant.headers)
        await mark_failed(committer, tenant, dead.json()["execution_id"], dead_letter=True)
        yield Live(
            base,
            tenant,
            {
                ("DELETE", "/api/workflows/"): {"id": doomed["id"]},
                ("", "/api/workflows/"): {"id": wf["id"]},
                ("", "/api/executions/"): {"id": run.json()["execution_id"]},
                ("", "/api/dlq/"): {"execution_id": dead.json()["execution_id"]},
            },
        )
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
        await committer.close()


def _real_ids(method: str, path: str, live: Live) -> dict[str, str] | None:
    for (only, prefix), params in live.ids.items():
        if path.startswith(prefix) and only in ("", method.upper()):
            return params
    return None


def _fuzz(live: Live, statuses: Counter[int]) -> list[str]:
    """Run every operation's strategies; return the failures (as text) instead of stopping at the first."""
    schema = schemathesis.openapi.from_url(f"{live.base}/openapi.json")
    headers = dict(live.tenant.headers)
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        strategies: list[tuple[str, Any, int]] = [
            ("positive", operation.as_strategy(), POSITIVE_EXAMPLES),
            ("negative", operation.as_strategy(schemathesis.GenerationMode.NEGATIVE), NEGATIVE_EXAMPLES),
        ]
        if (ids := _real_ids(operation.method, operation.path, live)) is not None:
            strategies.append(("positive/real ids", operation.as_strategy(path_parameters=ids), POSITIVE_EXAMPLES))
        for mode, strategy, examples in strategies:

            @given(case=strategy)
            @hypothesis_settings(
                max_examples=examples,
                deadline=None,
                database=None,
                derandomize=True,
                suppress_health_check=list(HealthCheck),
            )
            def check(case: schemathesis.Case) -> None:
                response = case.call_and_validate(base_url=live.base, headers=headers, checks=CHECKS, timeout=10)
                statuses[response.status_code] += 1

            try:
                check()
            except Unsatisfiable:
                pass  # no invalid request exists for an operation without inputs
            except Exception as exc:  # collect every operation's failure, report them together
                failures.append(f"{operation.method.upper()} {operation.path} ({mode}):\n{exc}")
    return failures


@pytest.mark.slow
async def test_api_conforms_to_its_openapi_document(live: Live) -> None:
    statuses: Counter[int] = Counter()
    failures = await asyncio.wait_for(asyncio.to_thread(_fuzz, live, statuses), 120)
    assert not failures, "\n\n".join(failures)
    # the run reached success paths, not only refusals
    assert {200, 201, 202, 204} <= set(statuses), statuses
    print(f"schemathesis: {sum(statuses.values())} requests, by status {dict(sorted(statuses.items()))}")
