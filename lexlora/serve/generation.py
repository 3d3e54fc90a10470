"""From a validated OpenAI request to a response: resolve the model (→ target), admit (the
tenant's share of the bounded queue), tokenise the prompts off the event loop, check the limits,
pin the adapter, run one engine row per prompt, answer as JSON (one choice per prompt) or as an
event stream (one prompt). An engine that cannot take requests now is a 503.

Every path that ends a request releases its queue place and its adapter pin exactly once: when
the response is complete, when the engine fails, or when the client disconnects (which also
cancels the engine row, so its generation stops).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from lexlora.errors import LexloraError
from lexlora.serve.admission import Ticket
from lexlora.serve.catalog import Target
from lexlora.serve.engines.base import (
    EngineError,
    EngineUnavailable,
    Generation,
    GenerationRequest,
    PromptLogprobs,
    SamplingParams,
    TextDelta,
)
from lexlora.serve.engines.base import Event as EngineEvent
from lexlora.serve.engines.base import collect as collect_events
from lexlora.serve.errors import ApiError, bad_request
from lexlora.serve.formats import DONE, Echo, ResponseFormat, sse
from lexlora.serve.gateway import Gateway
from lexlora.serve.prompts import PromptEncoder, encoder_for
from lexlora.serve.protocol import ChatCompletionRequest, CompletionRequest

log = logging.getLogger("lexlora.serve")


@dataclass
class Job:
    """A request ready for the engine: one row per prompt (their adapter name is filled in once
    pinned)."""

    tenant: str
    target: Target
    requests: list[GenerationRequest]
    format: ResponseFormat
    stream: bool
    include_usage: bool


@dataclass(frozen=True)
class Limit:
    """A request's completion-token limit: the value asked for (None: the server default) and
    the field that asked, for error messages."""

    requested: int | None
    param: str = "max_tokens"


@dataclass(frozen=True)
class Scoring:
    """What a request asks to be scored: ``logprobs`` per generated token (None: nothing),
    ``prompt_logprobs`` for the prompt, and whether the prompt is echoed."""

    logprobs: int | None = None
    prompt_logprobs: int | None = None
    echo: bool = False


async def answer_completion(
    gw: Gateway, tenant: str, req: CompletionRequest, http: Request
) -> Response:
    prompts = req.prompts()
    params = ["prompt"] if len(prompts) == 1 else [f"prompt.{i}" for i in range(len(prompts))]

    def encode(encoder: PromptEncoder) -> list[list[int]]:
        return [encoder.completion(p, param) for p, param in zip(prompts, params, strict=True)]

    scores = req.logprobs if req.echo else None
    if req.echo and req.max_tokens == 0 and scores is None:
        scores = 0  # a score-only row: the engine runs the prompt, the answer shows no log-probs
    scoring = Scoring(req.logprobs, scores, req.echo)
    return await _answer(gw, tenant, req, encode, Limit(req.max_tokens), "prompt", scoring, http)


async def answer_chat(
    gw: Gateway, tenant: str, req: ChatCompletionRequest, http: Request
) -> Response:
    messages = [{"role": m.role, "content": m.text()} for m in req.messages]
    limit = (
        Limit(req.max_completion_tokens, "max_completion_tokens")
        if req.max_completion_tokens is not None
        else Limit(req.max_tokens)
    )
    scoring = Scoring(logprobs=(req.top_logprobs or 0) if req.logprobs else None)
    encode = lambda encoder: [encoder.chat(messages)]  # noqa: E731
    return await _answer(gw, tenant, req, encode, limit, "messages", scoring, http)


async def _answer(
    gw: Gateway,
    tenant: str,
    req: CompletionRequest | ChatCompletionRequest,
    encode: Callable[[PromptEncoder], list[list[int]]],
    limit: Limit,
    prompt_param: str,
    scoring: Scoring,
    http: Request,
) -> Response:
    target = _target(gw, tenant, req)
    ticket = gw.admission.admit(tenant)  # before tokenising: a big prompt uses the tenant's share
    try:
        encoder = await asyncio.to_thread(_encoder, gw, target)
        prompts = await asyncio.to_thread(encode, encoder)  # never blocks the event loop
        job = _job(gw, tenant, req, target, prompts, limit, prompt_param, scoring, encoder)
    except BaseException:
        ticket.release()
        raise
    return await respond(gw, job, http, ticket)


def _encoder(gw: Gateway, target: Target) -> PromptEncoder:
    """The prompt encoder of ``target``: a plain new-token adapter's own tokenizer, else the
    base's (scaling and composition are LoRA only, see the catalog)."""
    folder = target.parts[0][0].path if target.is_plain else None
    return encoder_for(gw.prompts, folder)


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
    prompts: list[list[int]],
    limit: Limit,
    prompt_param: str,
    scoring: Scoring,
    encoder: PromptEncoder,
) -> Job:
    cfg = gw.config
    requests = []
    for ids in prompts:
        max_tokens = token_budget(
            len(ids),
            limit,
            gw.engine.max_context,
            prompt_param,
            cfg.default_max_tokens,
            cfg.max_tokens,
        )
        sampling = SamplingParams(
            max_tokens=max_tokens,
            temperature=req.temperature,
            top_p=req.top_p,
            stop=tuple(req.stop_list()),
            seed=req.seed,
            ignore_eos=req.ignore_eos,
            logprobs=scoring.logprobs,
        )
        requests.append(
            GenerationRequest(
                prompt_ids=ids,
                sampling=sampling,
                owner=tenant,
                prompt_logprobs=scoring.prompt_logprobs,
            )
        )
    echo = [Echo(encoder.text(ids), ids) for ids in prompts] if scoring.echo else None
    if echo and isinstance(req, CompletionRequest):  # a text prompt is echoed as it was sent
        for e, prompt in zip(echo, req.prompts(), strict=True):
            if isinstance(prompt, str):
                e.text = prompt
    options = req.stream_options
    fmt = ResponseFormat(
        model=req.model,
        chat=isinstance(req, ChatCompletionRequest),
        token_text=encoder.token_text,
        logprobs=scoring.logprobs is not None,
        echo=echo,
    )
    return Job(
        tenant=tenant,
        target=target,
        requests=requests,
        format=fmt,
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


def unavailable(exc: EngineUnavailable) -> ApiError:
    """503 for an engine that cannot take requests now (e.g. its vLLM child is restarting)."""
    return ApiError(503, str(exc), type="server_error", code="engine_unavailable")


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
    except EngineUnavailable as exc:
        ticket.release()
        raise unavailable(exc) from None
    except BaseException:
        ticket.release()
        raise

    started = time.perf_counter()

    def release() -> None:
        ticket.release()
        if name is not None:
            gw.residency.release(name)
        latency = gw.metrics.adapter_latency.labels(job.tenant, job.target.label)
        latency.observe(time.perf_counter() - started)

    gw.metrics.adapter_requests.labels(job.tenant, job.target.label).inc()
    streams = [gw.engine.stream(dataclasses.replace(r, adapter=name)) for r in job.requests]
    if job.stream:
        return EventStream(_sse_body(gw, job, streams[0]), on_close=release)
    try:
        results = await _collect_unless_disconnected(streams, http)
    except EngineError as exc:
        raise bad_request(str(exc)) from None
    except EngineUnavailable as exc:
        raise unavailable(exc) from None
    finally:
        release()
    if results is None:  # the client is gone: nobody reads this
        return Response(status_code=499)
    for result in results:
        _count_tokens(gw, job, result.prompt_tokens, result.completion_tokens)
    return JSONResponse(job.format.whole(results))


def _count_tokens(gw: Gateway, job: Job, prompt: int, completion: int) -> None:
    gw.metrics.prompt_tokens.labels(job.tenant).inc(prompt)
    gw.metrics.generated_tokens.labels(job.tenant).inc(completion)
    gw.metrics.adapter_tokens.labels(job.tenant, job.target.label).inc(completion)


async def _wait_for_disconnect(http: Request) -> None:
    while (await http.receive())["type"] != "http.disconnect":
        pass


async def _collect_all(streams: list[AsyncIterator[EngineEvent]]) -> list[Generation]:
    return list(await asyncio.gather(*(collect_events(s) for s in streams)))


async def _collect_unless_disconnected(
    streams: list[AsyncIterator[EngineEvent]], http: Request
) -> list[Generation] | None:
    """Every row's whole generation, or None if the client disconnected first (the rows are
    cancelled); the first row to fail fails them all."""
    collect = asyncio.ensure_future(_collect_all(streams))
    watch = asyncio.ensure_future(_wait_for_disconnect(http))
    try:
        await asyncio.wait({collect, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not collect.done():
            collect.cancel()
        await asyncio.gather(collect, watch, return_exceptions=True)
        for stream in streams:
            await stream.aclose()  # type: ignore[attr-defined]
    return None if collect.cancelled() else collect.result()


async def _sse_body(
    gw: Gateway, job: Job, events: AsyncIterator[EngineEvent]
) -> AsyncIterator[str]:
    fmt = job.format
    opening = fmt.opening()
    if opening:
        yield opening
    try:
        async for event in events:
            if isinstance(event, PromptLogprobs):
                chunk = fmt.prompt(event)
                if chunk:
                    yield chunk
                continue
            if isinstance(event, TextDelta):
                yield fmt.delta(event)
                continue
            _count_tokens(gw, job, event.prompt_tokens, event.completion_tokens)
            yield fmt.finish(event)
            if job.include_usage:
                yield fmt.usage(event.prompt_tokens, event.completion_tokens)
    except EngineError as exc:
        yield sse(bad_request(str(exc)).body())
    except EngineUnavailable as exc:
        yield sse(unavailable(exc).body())
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
