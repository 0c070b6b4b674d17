"""``GET /``: a placeholder page until the dashboard is built."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Orquesta</title></head>
<body>
<h1>Orquesta</h1>
<p>This is a placeholder: the dashboard is being built separately and will replace this page.</p>
<p>The API is described at <a href="/openapi.json">/openapi.json</a>.
Health: <a href="/healthz">/healthz</a>, readiness: <a href="/readyz">/readyz</a>.</p>
</body>
</html>
"""


async def home(request: Request) -> Response:
    return HTMLResponse(PAGE)


routes = [Route("/", home, methods=["GET"])]
