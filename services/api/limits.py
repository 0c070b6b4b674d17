"""Request body size limit, as pure ASGI middleware.

A declared ``Content-Length`` over the limit is refused before the body is read at all; a chunked body is
counted as it streams and refused at the first chunk that passes the limit, so no request can make the
server hold more than the limit in memory.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.api import responses
from services.api.errors import error_response
from shared.infra.errors import BadRequest, OrqError, PayloadTooLarge


class BodySizeLimit:
    """Refuse HTTP request bodies larger than ``max_bytes`` with 413."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None:
            refusal = self._check_declared(declared)
            if refusal is not None:
                await error_response(refusal, {"Connection": "close"})(scope, receive, send)
                return

        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise self._too_large()
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except PayloadTooLarge as exc:
            # Normally the API's exception handlers answer; this covers a body read outside a route.
            if started:
                raise
            await responses.json(exc.to_body(), exc.status, {"Connection": "close"})(scope, receive, send)

    def _check_declared(self, declared: str) -> OrqError | None:
        if not declared.isdigit():
            return BadRequest("invalid Content-Length header")
        if int(declared) > self.max_bytes:
            return self._too_large()
        return None

    def _too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"request body is larger than {self.max_bytes} bytes", limit=self.max_bytes)
