"""From a validated OpenAI request to a response: resolve the model (→ target), admit (the
tenant's share of the bounded queue), tokenise the prompt off the event loop, check the limits,
pin the adapter, run on the engine, answer as JSON or as an event stream.

Every path that ends a request releases its queue place and its adapter pin exactly once: when
the response is complete, when the engine fails, or when the client disconnects (which also
cancels the engine row, so its generation stops).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from functools import partial

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from lexlora.errors import LexloraError
from lexlora.serve.admission import Ticket
from lexlora.serve.catalog import Target
from lexlora.serve.engines.base import (
    EngineError,
    Finished,
    Generation,
    GenerationRequest,
    SamplingParams,
    TextDelta,
)
from lexlora.serve.errors import ApiError, bad_request
from lexlora.serve.formats import DONE, ResponseFormat, sse
from lexlora.serve.protocol import ChatCompletionRequest, CompletionRequest
from lexlora.serve.state import Gateway

log = logging.getLogger("lexlora.serve")


@dataclass
class Job:
    """A request ready for the engine (its adapter name is filled in once pinned)."""

    tenant: str
    target: Target
    request: GenerationRequest
    format: ResponseFormat
    stream: bool
    include_usage: bool


@dataclass(frozen=True)
class Limit:
    """A request's completion-token limit: the value asked for (None: the server default) and
    the field that asked, for error messages."""

    requested: int | None
    param: str = "max_tokens"


async def answer_completion(
    gw: Gateway, tenant: str, req: CompletionRequest, http: Request
) -> Response:
    encode = partial(gw.prompts.completion, req.prompt_text())
    return await _answer(gw, tenant, req, encode, Limit(req.max_tokens), "prompt", http)


async def answer_chat(
    gw: Gateway, tenant: str, req: ChatCompletionRequest, http: Request
) -> Response:
    messages = [{"role": m.role, "content": m.text()} for m in req.messages]
    limit = (
        Limit(req.max_completion_tokens, "max_completion_tokens")
        if req.max_completion_tokens is not None
        else Limit(req.max_tokens)
    )
    encode = partial(gw.prompts.chat, messages)
    return await _answer(gw, tenant, req, encode, limit, "messages", http)


async def _answer(
    gw: Gateway,
    tenant: str,
    req: CompletionRequest | ChatCompletionRequest,
    encode: Callable[[], list[int]],
    limit: Limit,
    prompt_param: str,
    http: Request,
) -> Response:
    target = _target(gw, tenant, req)
    ticket = gw.admission.admit(tenant)  # before tokenising: a big prompt uses the tenant's share
    try:
        ids = await asyncio.to_thread(encode)  # a big prompt never blocks the event loop
        job = _job(gw, tenant, req, target, ids, limit, prompt_param)
    except BaseException:
        ticket.release()
        raise
    return await respond(gw, job, http, ticket)


def _target(gw: Gateway, tenant: str, req: CompletionRequest | ChatCompletionRequest) -> Target:
    adapters = None if req.adapters is None else [(a.name, a.weight) for a in req.adapters]
    return gw.catalog.target(
        tenant,
        req.model,
        lora_scale=req.lora_scale,
        adapters=adapters,
        capabilities=gw.capabilities,
    )


def _job(
    gw: Gateway,
    tenant: str,
    req: CompletionRequest | ChatCompletionRequest,
    target: Target,
    ids: list[int],
    limit: Limit,
    prompt_param: str,
) -> Job:
    cfg = gw.config
    max_tokens = token_budget(
        len(ids), limit, gw.engine.max_context, prompt_param, cfg.default_max_tokens, cfg.max_tokens
    )
    sampling = SamplingParams(
        max_tokens=max_tokens,
        temperature=req.temperature,
        top_p=req.top_p,
        stop=tuple(req.stop_list()),
        seed=req.seed,
        ignore_eos=req.ignore_eos,
    )
    options = req.stream_options
    return Job(
        tenant=tenant,
        target=target,
        request=GenerationRequest(prompt_ids=ids, sampling=sampling, owner=tenant),
        format=ResponseFormat(model=req.model, chat=isinstance(req, ChatCompletionRequest)),
        stream=req.stream,
        include_usage=bool(options and options.include_usage),
    )


def token_budget(
    prompt_len: int, limit: Limit, max_context: int, param: str, default: int, cap: int
) -> int:
    """Completion tokens allowed: ``limit.requested`` (None: ``default``, within the context),
    or a 400 (the context is exceeded, or more than the server's ``cap`` is asked for)."""
    requested = limit.requested
    if prompt_len == 0:
        raise bad_request("the prompt is empty", param=param)
    if prompt_len >= max_context or (requested and prompt_len + requested > max_context):
        asked = f" + {requested} completion tokens" if requested else ""
        raise bad_request(
            f"This model's maximum context length is {max_context} tokens; the request has "
            f"{prompt_len} prompt tokens{asked}. Shorten the prompt or lower max_tokens.",
            param=param,
            code="context_length_exceeded",
        )
    if requested is None:
        return min(default, max_context - prompt_len)
    if requested > cap:
        message = f"'{limit.param}' is {requested}; this server allows at most {cap}"
        raise bad_request(message, param=limit.param)
    return requested


async def respond(gw: Gateway, job: Job, http: Request, ticket: Ticket) -> Response:
    """Pin, run and answer ``job`` holding ``ticket`` (released at the end; 429 when the adapter
    slots are full)."""
    try:
        name = None if job.target.is_base else await gw.residency.acquire(job.target)
    except LexloraError as exc:  # the weights on disk failed their checksum
        ticket.release()
        log.error("cannot load adapter: %s", exc)
        raise ApiError(500, "the adapter could not be loaded", type="server_error") from None
    except EngineError as exc:  # e.g. adapters that cannot be composed
        ticket.release()
        raise bad_request(str(exc), param="adapters") from None
    except BaseException:
        ticket.release()
        raise

    def release() -> None:
        ticket.release()
        if name is not None:
            gw.residency.release(name)

    gw.metrics.adapter_requests.labels(job.tenant, job.target.label).inc()
    events = gw.engine.stream(dataclasses.replace(job.request, adapter=name))
    if job.stream:
        return EventStream(_sse_body(gw, job, events), on_close=release)
    try:
        result = await _collect_unless_disconnected(events, http)
    except EngineError as exc:
        raise bad_request(str(exc)) from None
    finally:
        release()
    if result is None:  # the client is gone: nobody reads this
        return Response(status_code=499)
    _count_tokens(gw, job.tenant, result.prompt_tokens, result.completion_tokens)
    return JSONResponse(job.format.whole(result))


def _count_tokens(gw: Gateway, tenant: str, prompt: int, completion: int) -> None:
    gw.metrics.prompt_tokens.labels(tenant).inc(prompt)
    gw.metrics.generated_tokens.labels(tenant).inc(completion)


async def _collect(events: AsyncIterator[TextDelta | Finished]) -> Generation:
    parts = []
    async for event in events:
        if isinstance(event, TextDelta):
            parts.append(event.text)
        else:
            return Generation(
                "".join(parts), event.finish_reason, event.prompt_tokens, event.completion_tokens
            )
    raise RuntimeError("the engine stream ended without finishing")


async def _wait_for_disconnect(http: Request) -> None:
    while (await http.receive())["type"] != "http.disconnect":
        pass


async def _collect_unless_disconnected(
    events: AsyncIterator[TextDelta | Finished], http: Request
) -> Generation | None:
    """The whole generation, or None if the client disconnected first (the row is cancelled)."""
    collect = asyncio.ensure_future(_collect(events))
    watch = asyncio.ensure_future(_wait_for_disconnect(http))
    try:
        await asyncio.wait({collect, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not collect.done():
            collect.cancel()
        await asyncio.gather(collect, watch, return_exceptions=True)
    return None if collect.cancelled() else collect.result()


async def _sse_body(
    gw: Gateway, job: Job, events: AsyncIterator[TextDelta | Finished]
) -> AsyncIterator[str]:
    fmt = job.format
    opening = fmt.opening()
    if opening:
        yield opening
    try:
        async for event in events:
            if isinstance(event, TextDelta):
                yield fmt.delta(event.text)
                continue
            _count_tokens(gw, job.tenant, event.prompt_tokens, event.completion_tokens)
            yield fmt.finish(event.finish_reason)
            if job.include_usage:
                yield fmt.usage(event.prompt_tokens, event.completion_tokens)
    except EngineError as exc:
        yield sse(bad_request(str(exc)).body())
    except Exception:
        log.exception("generation failed")
        yield sse(ApiError(500, "internal error", type="server_error").body())
    finally:
        await events.aclose()  # type: ignore[attr-defined]
    yield DONE


class EventStream(StreamingResponse):
    """A text/event-stream response that always closes its body and calls ``on_close``."""

    def __init__(self, body: AsyncIterator[str], on_close: Callable[[], None]) -> None:
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        super().__init__(body, media_type="text/event-stream", headers=headers)
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            try:
                await self.body_iterator.aclose()  # type: ignore[attr-defined]
            finally:
                self._on_close()
