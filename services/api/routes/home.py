"""``GET /``: the dashboard, a static page (``static/``) that talks to the API and the event feed.

Nothing is built: the HTML, CSS and JavaScript in ``static/`` are served as they are, the assets under
``/static/``; ``/reference`` is the API reference, read from ``/openapi.json`` in the browser. The page holds
no secret; it asks for a tenant key and keeps it in the browser's storage.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().parent.parent / "static"
# Assets are small and change with the code: let browsers revalidate rather than cache stale copies.
NO_CACHE = {"Cache-Control": "no-cache"}


async def home(request: Request) -> Response:
    return FileResponse(STATIC / "index.html", media_type="text/html", headers=NO_CACHE)


async def reference(request: Request) -> Response:
    """The API reference: a page that renders ``/openapi.json`` as a readable list of operations."""
    return FileResponse(STATIC / "reference.html", media_type="text/html", headers=NO_CACHE)


routes: list[BaseRoute] = [
    Route("/", home, methods=["GET"]),
    Route("/reference", reference, methods=["GET"]),
    Mount("/static", StaticFiles(directory=STATIC), name="static"),
]
