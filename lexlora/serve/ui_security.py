"""The headers of every ``/ui`` answer, errors included: a Content-Security-Policy that runs only
the page's own script files (no inline script, no inline event handler, no ``eval``), ``nosniff``,
no framing, no referrer, no caching of keyed answers.

:class:`SecureRoute` is the route class of the UI's routers: it turns the errors a route raises
into OpenAI's error body itself, so that they carry these headers too.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response

from lexlora.serve.errors import ApiError

log = logging.getLogger("lexlora.serve.ui")

# The page: its own script and styles, fetches to its own origin, images from itself or data:
# URLs (a report's plots); forms never submit (the key is never sent in a URL), nothing frames it.
UI_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
# A served report file: no script at all, its own origin (sandbox), nothing but data: images.
REPORT_CSP = (
    "default-src 'none'; script-src 'none'; style-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'; sandbox"
)
HEADERS = {
    "Content-Security-Policy": UI_CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def error_response(error: ApiError, headers: dict[str, str] | None = None) -> Response:
    return Response(error.json_bytes(), error.status, headers, media_type="application/json")


class SecureRoute(APIRoute):
    """A route whose answers, errors included, carry :data:`HEADERS` (a header the route set
    itself, e.g. a report's CSP, is kept)."""

    def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
        handler = super().get_route_handler()

        async def secured(request: Request) -> Response:
            try:
                response = await handler(request)
            except ApiError as exc:
                response = error_response(exc)
            except StarletteHTTPException as exc:
                kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
                error = ApiError(exc.status_code, str(exc.detail), type=kind)
                response = error_response(error, exc.headers)
            except Exception as exc:
                log.exception("unhandled error", exc_info=exc)
                error = ApiError(500, "internal server error", type="server_error")
                response = error_response(error)
            for name, value in HEADERS.items():
                response.headers.setdefault(name, value)
            return response

        return secured
