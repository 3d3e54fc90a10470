"""The engine interface: what the gateway needs from whatever runs the model.

An engine serves one base model plus LoRA adapters known under *internal* names that the gateway
chooses (tenant-unique, e.g. ``acme--contracts--v2``); it never sees tenants or the HTTP protocol.
It takes token ids and returns text. Concurrent ``stream`` calls are batched by the engine.

Implementations: :mod:`lexlora.serve.engines.embedded` (transformers + PEFT in-process); a vLLM
engine (child process over HTTP) fits the same interface.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

BASE_ADAPTER = None  # ``GenerationRequest.adapter`` for the base model


class EngineError(Exception):
    """A request the engine cannot run (e.g. an unsupported feature); the gateway answers 400."""


@dataclass(frozen=True)
class SamplingParams:
    """Per-request decoding settings (temperature 0 = greedy)."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False


@dataclass(frozen=True)
class AdapterPart:
    """One adapter folder and its weight in a weighted (scaled or composed) adapter."""

    path: Path
    weight: float


@dataclass
class GenerationRequest:
    """One row to generate: prompt token ids, an internal adapter name (None = base), and who
    it is for: rows of different ``owner``s (the gateway passes the tenant) share the engine's
    batch fairly."""

    prompt_ids: list[int]
    sampling: SamplingParams
    adapter: str | None = BASE_ADAPTER
    owner: str | None = None


@dataclass(frozen=True)
class TextDelta:
    """New text for a row (text that could still become a stop string is held back)."""

    text: str


@dataclass(frozen=True)
class Finished:
    """The end of a row: ``finish_reason`` is ``stop`` (EOS or a stop string) or ``length``."""

    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


@dataclass
class Generation:
    """A whole (non-streamed) result."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


@dataclass
class EngineStats:
    """Live counters for /metrics."""

    waiting: int = 0
    running: int = 0
    generated_tokens: int = 0
    peak_batch: int = 0  # most rows ever decoded in one forward pass
    resident_adapters: list[str] = field(default_factory=list)


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
    def stream(self, request: GenerationRequest) -> AsyncIterator[TextDelta | Finished]:
        """Text deltas, then one Finished. Closing the iterator early cancels the row."""

    def stats(self) -> EngineStats:
        return EngineStats()

    async def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        """Run several requests concurrently (the engine batches them) and collect the text."""
        return list(await asyncio.gather(*(self._collect(r) for r in requests)))

    async def _collect(self, request: GenerationRequest) -> Generation:
        parts: list[str] = []
        async for event in self.stream(request):
            if isinstance(event, TextDelta):
                parts.append(event.text)
            else:
                return Generation(
                    "".join(parts),
                    event.finish_reason,
                    event.prompt_tokens,
                    event.completion_tokens,
                )
        raise RuntimeError("engine stream ended without a Finished event")
