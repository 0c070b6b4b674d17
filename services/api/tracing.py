"""A trace span around every HTTP request (a no-op unless tracing is configured)."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from shared.infra.tracing import span


class RequestSpans:
    """Pure ASGI: one span per request, named by method and path template."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        with span(f"{scope['method']} {scope['path']}", method=scope["method"], path=scope["path"]):
            await self.app(scope, receive, send)
