"""A real HTTP server on 127.0.0.1 that records webhook requests, and execution ends set straight in Redis."""

from __future__ import annotations

import hashlib
import hmac
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler

from redis.asyncio import Redis

from shared.domain.aggregates import encode_definition
from shared.infra.clock import now_ms
from shared.log import keys
from shared.log.commit import Applied, Committer, Unit
from shared.log.events import ExecutionCompleted, ExecutionFailed
from shared.log.workflows import NotifyDef, StepDef, WorkflowDef
from tests.helpers import http_server


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class WebhookServer:
    """Answers each POST with the next status of ``statuses`` (the last one repeats)."""

    statuses: list[int]
    requests: list[Received] = field(default_factory=list)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"


@contextmanager
def webhook_server(*statuses: int) -> Iterator[WebhookServer]:
    state = WebhookServer(list(statuses) or [200])
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with lock:
                state.requests.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                status = state.statuses[min(len(state.requests), len(state.statuses)) - 1]
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass

    with http_server(Handler) as port:
        state.port = port
        yield state


def valid_signature(secret: str, request: Received) -> bool:
    timestamp = request.headers["x-orquesta-timestamp"]
    expected = hmac.new(secret.encode(), timestamp.encode() + b"." + request.body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(request.headers.get("x-orquesta-signature", ""), f"sha256={expected}")


TENANT = "t" * 32
WORKFLOW = "w" * 32


async def end_execution(redis: Redis, committer: Committer, partitions: int, notify: list[NotifyDef],
                        *, execution_id: str, failed: bool = False) -> str:
    """An execution of a workflow with ``notify`` that just ended: its state, pinned definition, end event."""
    p = keys.partition_of(TENANT, partitions)
    definition = WorkflowDef(name="nightly report", steps=[StepDef(action="noop")], notify=notify)
    def_key = keys.workflow_version(p, WORKFLOW, 1)
    await redis.set(def_key, encode_definition(definition))
    await redis.hset(keys.execution(p, execution_id),
                     mapping={"tenant": TENANT, "workflow_id": WORKFLOW, "def_key": def_key, "status": "completed"})
    ts = now_ms()
    event = (ExecutionFailed(tenant_id=TENANT, aggregate_id=execution_id, ts=ts, error="boom", attempt=3)
             if failed else ExecutionCompleted(tenant_id=TENANT, aggregate_id=execution_id, ts=ts, result={"n": 1}))
    outcome = await committer.commit(Unit(p).event(event))
    assert isinstance(outcome, Applied)
    return outcome.event_ids[0]
