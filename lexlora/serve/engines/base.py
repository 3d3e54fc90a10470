"""The engine interface: what the gateway needs from whatever runs the model.

An engine serves one base model plus LoRA adapters known under *internal* names that the gateway
chooses (tenant-unique, e.g. ``acme--contracts--v2``); it never sees tenants or the HTTP protocol.
It takes token ids and returns text. Concurrent ``stream`` calls are batched by the engine.

Implementations: :mod:`lexlora.serve.engines.embedded` (transformers + PEFT in-process),
:mod:`lexlora.serve.engines.vllm` (one vLLM server, a child process or attached by URL) and
:mod:`lexlora.serve.engines.vllm_replicas` (vLLM replicas behind vllm-router).
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BASE_ADAPTER = None  # ``GenerationRequest.adapter`` for the base model


class EngineError(Exception):
    """A request the engine cannot run (e.g. an unsupported feature); the gateway answers 400."""


class EngineUnavailable(Exception):
    """The engine cannot take requests now (e.g. its vLLM child died and is being restarted);
    the gateway answers 503 with this message."""


@dataclass(frozen=True)
class SamplingParams:
    """Per-request decoding settings (temperature 0 = greedy)."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False
    logprobs: int | None = None  # per generated token: its log-prob and this many alternatives


@dataclass(frozen=True)
class TokenLogprob:
    """One token's log-probability under the model (raw logits, before temperature/top-p) and
    the ``top`` likeliest tokens at that position as ``(token id, log-prob)``, best first."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class AdapterPart:
    """One adapter folder and its weight in a weighted (scaled or composed) adapter."""

    path: Path
    weight: float


@dataclass
class GenerationRequest:
    """One row to generate: prompt token ids, an internal adapter name (None = base), and who
    it is for: rows of different ``owner``s (the gateway passes the tenant) share the engine's
    batch fairly.

    ``prompt_logprobs`` (k ≥ 0) also scores the prompt: a :class:`PromptLogprobs` event comes
    first. With ``sampling.max_tokens == 0`` the row only scores (one forward pass, no decoding)."""

    prompt_ids: list[int]
    sampling: SamplingParams
    adapter: str | None = BASE_ADAPTER
    owner: str | None = None
    prompt_logprobs: int | None = None


@dataclass(frozen=True)
class PromptLogprobs:
    """The prompt's scores: one entry per prompt token from the second on (the first token has
    no context, so no log-prob)."""

    entries: tuple[TokenLogprob, ...]


@dataclass(frozen=True)
class TextDelta:
    """New text for a row (text that could still become a stop string is held back), and, when
    ``sampling.logprobs`` is set, the generated tokens released with it."""

    text: str
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class Finished:
    """The end of a row: ``finish_reason`` is ``stop`` (EOS or a stop string) or ``length``;
    ``logprobs``: generated tokens not released with a delta (a held-back stop string; never
    the EOS that ended the row)."""

    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    logprobs: tuple[TokenLogprob, ...] = ()


Event = PromptLogprobs | TextDelta | Finished


@dataclass
class Generation:
    """A whole (non-streamed) result; ``logprobs`` are the generated tokens' (when asked) and
    ``prompt_logprobs`` the prompt's (when asked)."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprob] | None = None


@dataclass
class ReplicaStats:
    """One replica of a scaled-out engine, as its own ``/metrics`` and its supervisor say."""

    replica: str  # its index
    url: str
    up: bool
    restarts: int
    requests: float  # finished requests it counted
    prompt_tokens: float
    generation_tokens: float
    adapter_loads: dict[str, int]  # cold loads per internal adapter name (children only)


@dataclass
class EngineStats:
    """Live counters for /metrics."""

    waiting: int = 0
    running: int = 0
    generated_tokens: int = 0
    peak_batch: int = 0  # most rows ever decoded in one forward pass
    resident_adapters: list[str] = field(default_factory=list)
    replicas: list[ReplicaStats] = field(default_factory=list)  # scaled-out engines


class Engine(ABC):
    """Load/unload adapters under internal names; generate or stream text for token ids."""

    name: str = "engine"
    supports_scale: bool = False  # load_weighted_adapter with one part
    supports_composition: bool = False  # load_weighted_adapter with several parts

    @property
    @abstractmethod
    def max_context(self) -> int:
        """Longest prompt + completion, in tokens."""

    async def start(self) -> None:
        """Begin serving (threads, child processes)."""
        return None

    async def close(self) -> None:
        """Stop serving; release what ``start`` took."""
        return None

    @abstractmethod
    async def load_adapter(self, name: str, path: Path) -> None:
        """Make the adapter folder ``path`` usable as ``name``."""

    async def load_weighted_adapter(self, name: str, parts: Sequence[AdapterPart]) -> None:
        """Make ``Σ weight·ΔW(part)`` usable as ``name`` (one part: a scaled adapter)."""
        raise EngineError(f"the {self.name} engine cannot scale or compose adapters")

    @abstractmethod
    async def unload_adapter(self, name: str) -> None:
        """Forget ``name`` (the gateway never unloads an adapter a request is using)."""

    @abstractmethod
    def stream(self, request: GenerationRequest) -> AsyncIterator[Event]:
        """PromptLogprobs (when asked), text deltas, then one Finished. Closing the iterator
        early cancels the row."""

    def stats(self) -> EngineStats:
        return EngineStats()

    async def refresh_stats(self) -> None:  # noqa: B027 - most engines have nothing to fetch
        """Fetch what :meth:`stats` reports from elsewhere (a scaled-out engine's replicas)."""

    def health(self) -> dict[str, Any]:
        """What ``/health`` reports for the engine: ``state`` is ``ok`` when it takes requests
        (anything else answers 503), plus whatever the engine adds (restarts, last exit)."""
        return {"state": "ok"}

    async def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        """Run several requests concurrently (the engine batches them) and collect the text."""
        return list(await asyncio.gather(*(collect(self.stream(r)) for r in requests)))


async def collect(events: AsyncIterator[Event]) -> Generation:
    """A whole :class:`Generation` from a row's events."""
    parts: list[str] = []
    logprobs: list[TokenLogprob] = []
    prompt: list[TokenLogprob] | None = None
    async for event in events:
        if isinstance(event, PromptLogprobs):
            prompt = list(event.entries)
        elif isinstance(event, TextDelta):
            parts.append(event.text)
            logprobs.extend(event.logprobs)
        else:
            logprobs.extend(event.logprobs)
            return Generation(
                "".join(parts),
                event.finish_reason,
                event.prompt_tokens,
                event.completion_tokens,
                logprobs,
                prompt,
            )
    raise RuntimeError("the engine stream ended without a Finished event")
