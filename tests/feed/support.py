"""Helpers for feed tests: appending events the way services do, and reading a socket."""

from __future__ import annotations

import asyncio
import json
from typing import Any, cast

from redis.asyncio import Redis
from websockets.asyncio.client import ClientConnection

from shared.infra.clock import now_ms
from shared.log import keys
from shared.log.commit import Applied, Committer, Unit
from shared.log.consumer import records_of
from shared.log.events import ExecutionLog
from shared.log.redis import Entries
from tests.api.support import TenantHandle


async def append_logs(
    committer: Committer, tenant: TenantHandle, count: int, *, execution_id: str = "run-1", start: int = 0,
    pad: int = 0,
) -> list[str]:
    """Append ``count`` ``execution.log`` events (message = their number, plus ``pad`` characters); their ids."""
    filler = "x" * pad
    units = [
        Unit(tenant.partition).event(
            ExecutionLog(tenant_id=tenant.id, aggregate_id=execution_id, ts=now_ms(), step_index=0,
                         message=f"{start + i}{' ' + filler if pad else ''}")
        )
        for i in range(count)
    ]
    ids = []
    for outcome in await committer.commit_all(units):
        assert isinstance(outcome, Applied)
        ids += outcome.event_ids
    return ids


async def tenant_ids(redis: Redis, tenant: TenantHandle) -> list[str]:
    """Ids of every event of ``tenant`` in its partition's log, in order."""
    out = []
    for record in records_of(cast(Entries, await redis.xrange(keys.log(tenant.partition)))):
        if record.event().tenant_id == tenant.id:
            out.append(record.id)
    return out


async def receive(ws: ClientConnection, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The next ``count`` messages (fails if they do not all come within ``timeout``)."""

    async def take() -> list[dict[str, Any]]:
        return [json.loads(await ws.recv()) for _ in range(count)]

    return await asyncio.wait_for(take(), timeout)
