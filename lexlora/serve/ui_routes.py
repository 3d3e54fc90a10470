"""``/ui``: the playground and dashboard page, its static files and its JSON routes.

The page (``lexlora/serve/ui/``: plain HTML, CSS and JavaScript, no build step, nothing from
another origin) talks to the same OpenAI-compatible API with the key its user pastes, so it can
do exactly what that key may do. Every answer under ``/ui``, errors and unknown paths included,
carries the headers of :mod:`lexlora.serve.ui_security`.
"""

from __future__ import annotations

import functools
from pathlib import Path

from fastapi import APIRouter, Request
from starlette.responses import Response
from starlette.routing import Match

from lexlora.serve.errors import ApiError
from lexlora.serve.ui_api import api_router, promote_router
from lexlora.serve.ui_security import SecureRoute, error_response

UI_DIR = Path(__file__).with_name("ui")
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]

static_router = APIRouter(route_class=SecureRoute, include_in_schema=False)


@functools.cache
def assets() -> dict[str, str]:
    """The page's files (name → content type): exactly the files shipped in ``ui/``."""
    return {
        p.name: CONTENT_TYPES[p.suffix]
        for p in sorted(UI_DIR.iterdir())
        if p.is_file() and p.suffix in CONTENT_TYPES
    }


def _asset(name: str) -> Response:
    if name not in assets():
        raise _not_found()
    body = (UI_DIR / name).read_bytes()
    # public files; the sandboxed report frame (an opaque origin) loads report.css
    headers = {"Cache-Control": "no-cache", "Cross-Origin-Resource-Policy": "cross-origin"}
    return Response(body, media_type=assets()[name], headers=headers)


def _not_found() -> ApiError:
    return ApiError(404, "No such page.", type="not_found_error", code="not_found")


@static_router.get("/ui")
@static_router.get("/ui/")
async def index() -> Response:
    return _asset("index.html")


@static_router.get("/ui/{name}")
async def asset(name: str) -> Response:
    return _asset(name)


async def elsewhere(request: Request) -> Response:
    """Any other method or path under /ui: 405 naming the allowed methods, or 404."""
    allowed = sorted(
        {
            method
            for route in (*api_router.routes, *static_router.routes)
            if route.matches(request.scope)[0] == Match.PARTIAL
            for method in route.methods
        }
    )
    if allowed:
        error = ApiError(405, "Method Not Allowed")
        return error_response(error, {"Allow": ", ".join(allowed)})
    raise _not_found()


ui_router = APIRouter(route_class=SecureRoute, include_in_schema=False)
ui_router.include_router(api_router)
ui_router.include_router(promote_router)
ui_router.include_router(static_router)
for _path in ("/ui", "/ui/{rest:path}"):
    ui_router.add_api_route(_path, elsewhere, methods=ALL_METHODS)
