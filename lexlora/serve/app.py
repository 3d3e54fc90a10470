"""The FastAPI gateway: tenants and the OpenAI protocol in front of an :class:`Engine`.

Routes: ``GET /health`` (no key), ``GET /metrics`` (no key; Prometheus text), ``GET /v1/models``,
``GET /v1/models/{id}``, ``POST /v1/completions``, ``POST /v1/chat/completions`` (tenant keys) and
``/admin/adapters*`` (admin key; see :mod:`lexlora.serve.admin`), and ``/ui`` (playground and
dashboard; see :mod:`lexlora.serve.ui_routes`). Every error is OpenAI's error
object; a user mistake is a 4xx, never a 500. Request bodies are parsed by
:func:`~lexlora.serve.protocol.parse_request` (strict, 400 naming the field); ``/openapi.json``
still declares them, with the responses and errors of each route.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response

from lexlora.errors import LexloraError
from lexlora.registry import AdapterStore
from lexlora.serve.admin import admin_router
from lexlora.serve.admission import Admission
from lexlora.serve.auth import require_tenant
from lexlora.serve.bodylimit import BodySizeLimit
from lexlora.serve.catalog import TenantCatalog
from lexlora.serve.config import ServeConfig
from lexlora.serve.engines.base import Engine, EngineError, EngineUnavailable
from lexlora.serve.errors import ApiError, ErrorBody, bad_request, model_not_found
from lexlora.serve.gateway import Gateway
from lexlora.serve.generation import answer_chat, answer_completion, unavailable
from lexlora.serve.metrics import Metrics, MetricsMiddleware
from lexlora.serve.prompts import PromptEncoder
from lexlora.serve.protocol import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    ModelCard,
    ModelList,
    now,
    parse_request,
)
from lexlora.serve.residency import ResidentAdapters
from lexlora.serve.tenants import KeyDirectory
from lexlora.serve.ui_routes import ui_router

STARTED = now()  # the base model's card: when this server process started

log = logging.getLogger("lexlora.serve")

REQUEST_MODELS: tuple[type[BaseModel], ...] = (CompletionRequest, ChatCompletionRequest)
_ERRORS = {
    400: "Invalid request (names the field in `param`)",
    401: "Missing or invalid API key",
    404: "No such model for this tenant",
    413: "Request body too large",
    429: "The tenant's share of the queue is in use, or the server is at capacity",
    503: "The engine cannot take requests now (e.g. vLLM is restarting): retry",
}


def _errors(*statuses: int) -> dict[int | str, dict]:
    return {s: {"model": ErrorBody, "description": _ERRORS[s]} for s in statuses}


def _generation_route(request: type[BaseModel], whole: type[BaseModel], chunk: type[BaseModel]):
    """OpenAPI for a generation route: its request body and its JSON or event-stream answer."""
    ref = {"$ref": f"#/components/schemas/{request.__name__}"}
    stream = {"schema": {"type": "string", "description": f"`data: {chunk.__name__}` events"}}
    return {
        "openapi_extra": {
            "requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}
        },
        "responses": {
            200: {
                "model": whole,
                "description": f"A {whole.__name__}; with `stream`, server-sent events",
                "content": {"text/event-stream": stream},
            },
            **_errors(400, 401, 404, 413, 429, 503),
        },
    }


def create_app(
    config: ServeConfig,
    engine: Engine,
    prompts: PromptEncoder,
    store: AdapterStore,
    base_config_hash: str,
) -> FastAPI:
    """The gateway for ``engine`` (started and closed with the app; tenants' adapters preloaded)."""
    admission = Admission(config.max_queue, config.queue_share, config.tenants)
    metrics = Metrics(lambda: admission.depth, engine.stats)
    gw = Gateway(
        config=config,
        engine=engine,
        catalog=TenantCatalog(store, config.model_name, base_config_hash),
        residency=ResidentAdapters(engine, store, config.max_loras),
        admission=admission,
        prompts=prompts,
        keys=KeyDirectory(config),
        metrics=metrics,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await engine.start()
        try:
            await preload(gw)
            yield
        finally:
            await engine.close()

    app = FastAPI(title="lexlora", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.gateway = gw
    app.add_middleware(BodySizeLimit, max_bytes=config.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # outermost: it counts the 413s too
    _install_error_handlers(app)
    _declare_request_models(app, REQUEST_MODELS)
    app.include_router(admin_router)
    app.include_router(ui_router)

    @app.get("/health")
    async def health() -> Response:
        """200 while the engine takes requests, else 503; the engine's own state either way."""
        state = engine.health()
        ok = state.get("state") == "ok"
        body = {
            "status": "ok" if ok else "unavailable",
            "model": config.model_name,
            "engine": {"name": engine.name, **state},
        }
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def prometheus() -> Response:
        await engine.refresh_stats()
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.get("/v1/models", response_model=ModelList, responses=_errors(401))
    async def models(request: Request) -> dict:
        tenant = require_tenant(request)
        return list_models(gw, tenant).model_dump()

    @app.get("/v1/models/{model_id:path}", response_model=ModelCard, responses=_errors(401, 404))
    async def model(model_id: str, request: Request) -> dict:
        """One of the caller's models; another tenant's adapter is a 404 like a missing one."""
        tenant = require_tenant(request)
        for card in list_models(gw, tenant).data:
            if card.id == model_id:
                return card.model_dump()
        raise model_not_found()

    @app.post("/v1/completions", **_generation_route(CompletionRequest, Completion, Completion))
    async def completions(request: Request) -> Response:
        tenant = require_tenant(request)
        req = parse_request(CompletionRequest, await request.body())
        return await answer_completion(gw, tenant, req, request)

    @app.post(
        "/v1/chat/completions",
        **_generation_route(ChatCompletionRequest, ChatCompletion, ChatCompletionChunk),
    )
    async def chat_completions(request: Request) -> Response:
        tenant = require_tenant(request)
        req = parse_request(ChatCompletionRequest, await request.body())
        return await answer_chat(gw, tenant, req, request)

    return app


def list_models(gw: Gateway, tenant: str) -> ModelList:
    """The base model, then each of the tenant's adapters: ``name`` (latest), ``name@alias`` and
    ``name:version`` for every version."""
    base = gw.config.model_name
    cards = [ModelCard(id=base, created=STARTED, owned_by="lexlora", root=base)]
    seen: set[str] = set()
    for av in gw.catalog.adapters(tenant):
        ids = [f"{av.name}:{av.version}"] + [
            av.name if alias == "latest" else f"{av.name}@{alias}" for alias in av.aliases
        ]
        for model_id in ids:
            if model_id not in seen:
                seen.add(model_id)
                card = ModelCard(
                    id=model_id,
                    created=_unix(av.created_at),
                    owned_by=tenant,
                    root=model_id,
                    parent=base,
                )
                cards.append(card)
    cards[1:] = sorted(cards[1:], key=lambda c: c.id)
    return ModelList(data=cards)


def _unix(iso: str) -> int:
    """A registry timestamp (ISO 8601, UTC) as the Unix seconds of an OpenAI model card."""
    return int(datetime.fromisoformat(iso).timestamp())


async def preload(gw: Gateway) -> None:
    """Load every tenant's listed adapters (a missing one is logged, not fatal)."""
    for tenant, tc in gw.config.tenants.items():
        for ref in tc.adapters:
            try:
                target = gw.catalog.target(
                    tenant, ref, lora_scale=None, adapters=None, capabilities=gw.capabilities
                )
                await gw.residency.ensure(target)
            except (ApiError, LexloraError, EngineError) as exc:
                log.warning("preload %s/%s skipped: %s", tenant, ref, exc)


def _declare_request_models(app: FastAPI, request_models: tuple[type[BaseModel], ...]) -> None:
    """Add the request models' JSON schemas to ``/openapi.json`` (the routes parse their bodies
    themselves, so FastAPI does not find them)."""

    def openapi() -> dict:
        if app.openapi_schema is None:
            spec = FastAPI.openapi(app)
            _, defs = models_json_schema(
                [(m, "validation") for m in request_models],
                ref_template="#/components/schemas/{model}",
            )
            spec.setdefault("components", {}).setdefault("schemas", {}).update(defs["$defs"])
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _install_error_handlers(app: FastAPI) -> None:
    def as_response(error: ApiError, headers: dict[str, str] | None = None) -> Response:
        body = error.json_bytes()
        return Response(body, error.status, headers=headers, media_type="application/json")

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> Response:
        return as_response(exc)

    @app.exception_handler(EngineUnavailable)
    async def engine_unavailable(_: Request, exc: EngineUnavailable) -> Response:
        return as_response(unavailable(exc), headers={"Retry-After": "5"})

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> Response:
        err = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = ".".join(str(p) for p in err["loc"] if p != "body")
        return as_response(bad_request(f"'{loc}': {err['msg']}", param=loc or None))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> Response:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        error = ApiError(exc.status_code, str(exc.detail), type=kind)
        return as_response(error, headers=exc.headers)  # e.g. 405's Allow

    @app.exception_handler(Exception)
    async def internal_error(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        error = ApiError(500, "internal server error", type="server_error")
        return JSONResponse(error.body(), status_code=500)
