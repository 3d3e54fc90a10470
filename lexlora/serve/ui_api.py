"""The JSON routes behind ``/ui`` (read-only, keyed like the OpenAI routes) and promotion.

- ``GET /ui/api/me``: who the key is (a tenant, or the admin) and the base model's id.
- ``GET /ui/api/adapters/{model}``: the card of one of the caller's adapters (tenant key):
  base model, rank, recipe, run, evaluation headline, gate verdict, report. ``model`` resolves
  as in a request (the same cached version); another tenant's adapter is the same 404 as a
  missing one.
- ``GET /ui/api/reports/{path}``: a file of an evaluation report under ``reports_dir``, read-only
  (admin key: every report; tenant key: the reports of its own adapters). Any path that is not
  plainly inside ``reports_dir`` (``..``, absolute, hidden, a link pointing out) is a 404.
- ``GET /ui/api/admin/{runs,adapters,reports}`` (admin key): the dashboard's tables.
- ``POST /admin/adapters/promote`` (admin key): ``{"tenant", "ref", "alias"}`` points an alias at
  the version ``ref`` names; ``POST /admin/adapters/reload`` then moves traffic to it.
"""

from __future__ import annotations

import asyncio
import mimetypes

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.responses import Response

from lexlora.errors import LexloraError
from lexlora.registry import validate_name
from lexlora.serve.auth import require_admin, require_tenant
from lexlora.serve.errors import ApiError, bad_request, model_not_found, unauthorized
from lexlora.serve.gateway import Gateway
from lexlora.serve.tenants import Caller
from lexlora.serve.ui_records import (
    Folders,
    adapter_card,
    adapter_report,
    inside,
    list_reports,
    list_runs,
    read_bytes,
)
from lexlora.serve.ui_security import REPORT_CSP, SecureRoute

api_router = APIRouter(prefix="/ui/api", route_class=SecureRoute, include_in_schema=False)
promote_router = APIRouter(prefix="/admin/adapters", route_class=SecureRoute)

# Report files shown in place; anything else is served as a download.
INLINE_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".md": "text/plain; charset=utf-8",
    ".json": "application/json",
    ".txt": "text/plain; charset=utf-8",
    ".png": "image/png",
}


def _gateway(request: Request) -> Gateway:
    return request.app.state.gateway


def _caller(request: Request) -> Caller:
    caller = _gateway(request).keys.authenticate(request.headers.get("authorization"))
    if caller is None:
        raise unauthorized()
    return caller


def report_not_found() -> ApiError:
    """The one 404 for a report file that is missing, outside ``reports_dir`` or not the
    caller's: all give the same body."""
    return ApiError(404, "No such report file.", type="not_found_error", code="report_not_found")


@api_router.get("/me")
async def me(request: Request) -> dict:
    caller, gw = _caller(request), _gateway(request)
    role = {"role": "admin"} if caller.is_admin else {"role": "tenant", "tenant": caller.tenant}
    return {**role, "base": gw.config.model_name}


@api_router.get("/adapters/{model_id:path}")
async def card(model_id: str, request: Request) -> dict:
    tenant, gw = require_tenant(request), _gateway(request)
    if model_id == gw.config.model_name:
        raise model_not_found()
    av = gw.catalog.resolve(tenant, model_id)
    return await asyncio.to_thread(adapter_card, av, model_id, Folders.of(gw.config))


@api_router.get("/reports/{path:path}")
async def report_file(path: str, request: Request) -> Response:
    caller, gw = _caller(request), _gateway(request)
    folders = Folders.of(gw.config)
    found = await asyncio.to_thread(_report_file, gw, caller, folders, path)
    if found is None:
        raise report_not_found()
    data, suffix = found
    media = INLINE_TYPES.get(suffix)
    headers = {"Content-Security-Policy": REPORT_CSP}
    if media is None:
        media = mimetypes.guess_type(path)[0] or "application/octet-stream"
        headers["Content-Disposition"] = "attachment"
    return Response(data, media_type=media, headers=headers)


def _report_file(gw: Gateway, caller: Caller, folders: Folders, path: str):
    """(bytes, suffix) of the report file ``path`` if the caller may read it, else None."""
    file = inside(folders.reports, path)
    if file is None:
        return None
    if not caller.is_admin:
        own = (adapter_report(av, folders)[1] for av in gw.catalog.adapters(caller.tenant))
        if not any(report is not None and file.is_relative_to(report) for report in own):
            return None
    data = read_bytes(file)
    return None if data is None else (data, file.suffix.lower())


@api_router.get("/admin/runs")
async def runs(request: Request) -> dict:
    require_admin(request)
    folders = Folders.of(_gateway(request).config)
    return {"runs_dir": str(folders.runs), "runs": await asyncio.to_thread(list_runs, folders)}


@api_router.get("/admin/reports")
async def reports(request: Request) -> dict:
    require_admin(request)
    folders = Folders.of(_gateway(request).config)
    rows = await asyncio.to_thread(list_reports, folders)
    return {"reports_dir": str(folders.reports), "reports": rows}


@api_router.get("/admin/adapters")
async def adapters(request: Request) -> dict:
    """Every published version, by tenant; ``servable``: built for the served base model."""
    require_admin(request)
    gw = _gateway(request)
    versions = await asyncio.to_thread(gw.catalog.store.list)
    rows = [
        {
            "tenant": av.tenant,
            "name": av.name,
            "version": av.version,
            "aliases": list(av.aliases),
            "created_at": av.created_at,
            "method": av.method,
            "rank": av.rank,
            "recipe": av.metadata.get("recipe"),
            "run_id": av.metadata.get("run_id"),
            "servable": av.base_config_hash == gw.catalog.base_config_hash,
            "configured": av.tenant in gw.config.tenants,
        }
        for av in versions
    ]
    return {"tenants": sorted(gw.config.tenants), "base": gw.config.model_name, "adapters": rows}


class Promotion(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    tenant: str
    ref: str
    alias: str = "prod"


@promote_router.post("/promote")
async def promote(request: Request) -> dict:
    """Point ``alias`` of the tenant's adapter at the version ``ref`` names (``contracts:2``)."""
    require_admin(request)
    gw = _gateway(request)
    try:
        body = Promotion.model_validate_json(await request.body() or b"")
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or None
        raise bad_request(f"expected {{'tenant', 'ref', 'alias'}}: {err['msg']}", loc) from None
    if body.tenant not in gw.config.tenants:
        raise ApiError(404, "no such tenant in serve.yaml", param="tenant", code="tenant_not_found")
    try:
        validate_name("alias", body.alias)
    except LexloraError as exc:
        raise bad_request(str(exc), param="alias") from None
    try:
        av = gw.catalog.store.resolve(body.tenant, body.ref, verify=False)
    except (LexloraError, OverflowError):
        raise model_not_found("ref") from None
    if av.base_config_hash != gw.catalog.base_config_hash:
        raise model_not_found("ref")
    await asyncio.to_thread(gw.catalog.store.promote, av.tenant, av.name, av.version, body.alias)
    return {"promoted": av.ref, "alias": f"{av.tenant}/{av.name}@{body.alias}"}
