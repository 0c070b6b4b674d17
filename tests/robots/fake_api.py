"""A tiny real HTTP server speaking the robot protocol with scripted answers (503s, a 409 heartbeat), to test
the robot's side without an Orquesta deployment; every call it gets is recorded."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.helpers import free_port

ME = {"id": "r" * 32, "name": "bot-1", "pool": "desktop", "tenant_id": "t1"}


@dataclass
class FakeApi:
    """What the server will answer, and what it was asked."""

    tasks: list[dict[str, Any]] = field(default_factory=list)
    unavailable: int = 0  # answer this many calls (of any route) 503 first
    heartbeat_stop: str | None = None  # answer heartbeats 409 with this code
    lease_s: float = 0.6  # the lease a heartbeat renews
    calls: list[tuple[str, Any]] = field(default_factory=list)

    def called(self, route: str) -> list[Any]:
        return [body for name, body in self.calls if name == route]

    def app(self) -> Starlette:
        async def handle(request: Request) -> Response:
            route = request.scope["route"].name
            body = await request.json() if request.method == "POST" else None
            self.calls.append((route, body))
            if self.unavailable > 0:
                self.unavailable -= 1
                return JSONResponse({"error": {"code": "unavailable", "message": "try later"}}, status_code=503)
            match route:
                case "me":
                    return JSONResponse(ME)
                case "next":
                    if self.tasks:
                        return JSONResponse(self.tasks.pop(0))
                    await asyncio.sleep(0.05)  # a short long poll: these tests need not wait 20 s
                    return Response(status_code=204)
                case "heartbeat" if self.heartbeat_stop is not None:
                    return JSONResponse({"error": {"code": self.heartbeat_stop, "message": "stop"}}, status_code=409)
                case "heartbeat":
                    return JSONResponse({"lease_s": self.lease_s})
            return JSONResponse({})

        return Starlette(routes=[
            Route("/api/robots/me", handle, methods=["GET"], name="me"),
            Route("/api/robots/tasks/next", handle, methods=["POST"], name="next"),
            *(Route(f"/api/robots/tasks/{{task_id}}/{name}", handle, methods=["POST"], name=name)
              for name in ("heartbeat", "complete", "fail", "logs")),
        ])


def task(action: str, params: dict[str, Any], *, task_id: str = "task-1", lease_s: float = 0.6) -> dict[str, Any]:
    return {"task_id": task_id, "execution_id": "e" * 32, "step_index": 1, "action": action, "label": None,
            "params": params, "attempt": 1, "lease_s": lease_s}


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling (the test stops it)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@asynccontextmanager
async def serving(api: FakeApi, port: int | None = None) -> AsyncIterator[str]:
    """``api`` served on 127.0.0.1 for the block; its base URL."""
    port = port or free_port()
    server = _Server(uvicorn.Config(api.app(), host="127.0.0.1", port=port, log_config=None, lifespan="off"))
    running = asyncio.create_task(server.serve())
    while not server.started:
        assert not running.done(), "fake API died"
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await running
