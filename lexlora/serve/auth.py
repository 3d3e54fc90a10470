"""Who may call a route: ``require_tenant`` for /v1/*, ``require_admin`` for /admin/*.

A missing or unknown key is a 401; a valid key on the wrong kind of route is a 403.
"""

from __future__ import annotations

from starlette.requests import Request

from lexlora.serve.errors import forbidden, unauthorized
from lexlora.serve.tenants import Caller


def _caller(request: Request) -> Caller:
    caller = request.app.state.gateway.keys.authenticate(request.headers.get("authorization"))
    if caller is None:
        raise unauthorized()
    return caller


def require_tenant(request: Request) -> str:
    """The calling tenant's name."""
    caller = _caller(request)
    if caller.tenant is None:
        raise forbidden("the admin key has no tenant: use a tenant's API key for /v1 routes")
    return caller.tenant


def require_admin(request: Request) -> None:
    if not _caller(request).is_admin:
        raise forbidden("this route needs the admin key")
