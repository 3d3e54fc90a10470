"""Admin routes (admin key only): what is resident, load/unload, and reload aliases.

``POST /admin/adapters/reload`` re-resolves every cached reference (``contracts`` = ``@latest``,
``contracts@prod``): a newly published or promoted version is loaded first, then new requests use
it, while requests already running finish on the old one; the old one is unloaded once idle. A
new version that cannot be loaded (its weights fail their checks) is listed under ``failed`` and
the old one keeps serving.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, ValidationError

from lexlora.errors import LexloraError
from lexlora.serve.auth import require_admin
from lexlora.serve.catalog import Target
from lexlora.serve.engines.base import EngineError
from lexlora.serve.errors import ApiError, bad_request
from lexlora.serve.gateway import Gateway
from lexlora.serve.residency import internal_name

admin_router = APIRouter(prefix="/admin/adapters")


class AdapterRef(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    tenant: str
    ref: str


def _gateway(request: Request) -> Gateway:
    require_admin(request)
    return request.app.state.gateway


async def _target(request: Request, gw: Gateway) -> Target:
    try:
        body = AdapterRef.model_validate_json(await request.body() or b"")
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or None
        raise bad_request(f"expected {{'tenant', 'ref'}}: {err['msg']}", param=loc) from None
    if body.tenant not in gw.config.tenants:
        raise ApiError(404, "no such tenant in serve.yaml", param="tenant", code="tenant_not_found")
    av = gw.catalog.resolve(body.tenant, body.ref, param="ref")
    return Target(body.tenant, ((av, 1.0),))


@admin_router.get("")
async def resident(request: Request) -> dict:
    gw = _gateway(request)
    return {"max_loras": gw.residency.max_loras, "resident": gw.residency.snapshot()}


@admin_router.post("/load")
async def load(request: Request) -> dict:
    gw = _gateway(request)
    target = await _target(request, gw)
    try:
        name = await gw.residency.ensure(target)
    except EngineError as exc:  # e.g. above the vLLM server's max_lora_rank
        raise bad_request(str(exc), param="ref") from None
    except LexloraError as exc:  # weights failed their checksum or validation (e.g. NaN)
        raise ApiError(409, str(exc), param="ref", code="adapter_invalid") from None
    return {"loaded": name, "adapter": target.label}


@admin_router.post("/unload")
async def unload(request: Request) -> dict:
    gw = _gateway(request)
    target = await _target(request, gw)
    av = target.parts[0][0]
    names = {internal_name(target)} | {
        r["internal_name"]
        for r in gw.residency.snapshot()
        if r["tenant"] == target.tenant
        and any(p["name"] == av.name and p["version"] == av.version for p in r["parts"])
    }
    busy = [name for name in sorted(names) if not await gw.residency.unload(name)]
    if busy:
        raise ApiError(409, f"in use by running requests: {', '.join(busy)}", code="adapter_busy")
    return {"unloaded": sorted(names)}


@admin_router.post("/reload")
async def reload(request: Request) -> dict:
    gw = _gateway(request)
    resident = {r["internal_name"] for r in gw.residency.snapshot()}
    changes, loaded, failed = [], [], []
    for change in gw.catalog.changes():
        serving = internal_name(Target(change.tenant, ((change.old, 1.0),))) in resident
        if change.new is not None and serving:  # bring the new version in before traffic moves
            target = Target(change.tenant, ((change.new, 1.0),))
            try:
                loaded.append(await gw.residency.ensure(target))
            except (LexloraError, EngineError) as exc:  # keep serving the old version
                failed.append({**change.describe(), "error": str(exc)})
                continue
        changes.append(change)
    gw.catalog.apply(changes)  # new requests use the new versions from here on
    named = {internal_name(Target(t, ((av, 1.0),))) for t, av in gw.catalog.cached_versions()}
    superseded = {internal_name(Target(c.tenant, ((c.old, 1.0),))) for c in changes} - named
    unloaded = await gw.residency.unload_superseded(superseded)
    return {
        "changes": [c.describe() for c in changes],
        "loaded": loaded,
        "unloaded": unloaded,
        "failed": failed,
    }
