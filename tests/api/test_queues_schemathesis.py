"""Fuzzing the work-queue routes from ``/openapi.json`` with real queue and item ids, so success paths are
generated too (the whole-API fuzz only knows workflow and execution ids): no 5xx, documented statuses only,
bodies that fit their schemas."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis.errors import Unsatisfiable

from tests.api.test_schemathesis import CHECKS, Live, live

__all__ = ["live"]

EXAMPLES = 12


async def _ids(live: Live) -> dict[str, str]:
    async with httpx.AsyncClient(base_url=live.base, headers=live.tenant.headers) as client:
        queue = (await client.post("/api/queues", json={"name": "fuzzed", "max_retries": 1})).json()
        items = [{"data": {"n": n}, "reference": f"R{n}"} for n in range(40)]
        await client.post(f"/api/queues/{queue['id']}/items/bulk", json={"items": items})
        claimed = (await client.post(f"/api/queues/{queue['id']}/items/next")).json()
        doomed = (await client.post("/api/queues", json={"name": "doomed"})).json()
    return {"id": queue["id"], "item_id": claimed["id"], "doomed": doomed["id"]}


def _fuzz(live: Live, ids: dict[str, str], statuses: Counter[int]) -> list[str]:
    schema = schemathesis.openapi.from_url(f"{live.base}/openapi.json")
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if not operation.path.startswith("/api/queues/{id}"):
            continue
        params = {k: v for k, v in ids.items() if "{" + k + "}" in operation.path}
        if operation.method.upper() == "DELETE":  # a real queue deleted early would leave only 404s to fuzz
            params["id"] = ids["doomed"]
        strategies: list[tuple[str, Any]] = [
            ("positive/real ids", operation.as_strategy(path_parameters=params)),
            ("negative/real ids", operation.as_strategy(schemathesis.GenerationMode.NEGATIVE,
                                                        path_parameters=params)),
        ]
        for mode, strategy in strategies:

            @given(case=strategy)
            @hypothesis_settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                                 suppress_health_check=list(HealthCheck))
            def check(case: schemathesis.Case) -> None:
                response = case.call_and_validate(base_url=live.base, headers=dict(live.tenant.headers),
                                                  checks=CHECKS, timeout=10)
                statuses[response.status_code] += 1

            try:
                check()
            except Unsatisfiable:
                pass
            except Exception as exc:  # collect every operation's failure, report them together
                failures.append(f"{operation.method.upper()} {operation.path} ({mode}):\n{exc}")
    return failures


@pytest.mark.slow
async def test_queue_routes_conform_with_real_ids(live: Live) -> None:
    ids = await _ids(live)
    statuses: Counter[int] = Counter()
    failures = await asyncio.wait_for(asyncio.to_thread(_fuzz, live, ids, statuses), 120)
    assert not failures, "\n\n".join(failures)
    assert {200, 201} <= set(statuses), statuses
    print(f"queue routes fuzzed: {sum(statuses.values())} requests, by status {dict(sorted(statuses.items()))}")
