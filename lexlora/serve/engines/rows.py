"""One generating row of the embedded engine: its request, sampling state, and the text it has
let out so far (:class:`~lexlora.serve.engines.stop_text.StopText`)."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from lexlora.serve.engines.base import (
    Finished,
    GenerationRequest,
    PromptLogprobs,
    TextDelta,
    TokenLogprob,
)
from lexlora.serve.engines.stop_text import StopText

Event = PromptLogprobs | TextDelta | Finished | BaseException
PEFT_BASE = "__base__"  # PEFT's adapter name for "no adapter" in mixed batches


@dataclass
class Row:
    """A request being decoded, and where its events go (``emit`` is thread-safe)."""

    request: GenerationRequest
    emit: Callable[[Event], None]
    cancelled: threading.Event = field(default_factory=threading.Event)
    generated: list[int] = field(default_factory=list)
    text: StopText | None = None
    generator: torch.Generator | None = None
    done: bool = False
    pending: list[TokenLogprob] = field(default_factory=list)  # logprobs not yet released
    decode: Callable[[list[int]], str] | None = None  # the row's own (else the engine's)

    @property
    def peft_adapter(self) -> str:
        return self.request.adapter or PEFT_BASE

    @property
    def prompt_len(self) -> int:
        return len(self.request.prompt_ids)

    def start(self, decode: Callable[[list[int]], str]) -> None:
        """Prepare the text tracker and a seeded random generator (sampling only)."""
        sampling = self.request.sampling
        self.text = StopText(self.decode or decode, sampling.stop)
        if sampling.temperature > 0:
            seed = sampling.seed if sampling.seed is not None else random.getrandbits(63)
            self.generator = torch.Generator().manual_seed(seed)

    @property
    def scores_prompt(self) -> bool:
        """The row asks for its prompt's log-probs, or only scores (``max_tokens`` 0)."""
        request = self.request
        return request.prompt_logprobs is not None or request.sampling.max_tokens == 0

    def release(self, text: str) -> None:
        """Let ``text`` out, with the generated tokens' log-probs held so far."""
        if text:
            self.emit(TextDelta(text, tuple(self.pending)))
            self.pending.clear()

    def finish(self, reason: str) -> None:
        self.done = True
        self.emit(Finished(reason, self.prompt_len, len(self.generated), tuple(self.pending)))
        self.pending.clear()

    def fail(self, error: BaseException) -> None:
        """End this row with ``error`` (once; a row that already ended is left alone)."""
        if not self.done:
            self.done = True
            self.emit(error)


def token_logprobs(logprobs: torch.Tensor, tokens: list[int], k: int) -> list[TokenLogprob]:
    """One :class:`TokenLogprob` per position: ``logprobs`` is ``[positions, vocab]``
    (log-softmaxed), ``tokens`` the token at each position, ``k`` how many alternatives."""
    if not tokens:
        return []
    chosen = logprobs.gather(1, torch.tensor(tokens).unsqueeze(1)).squeeze(1).tolist()
    if k > 0:
        values, ids = logprobs.topk(min(k, logprobs.shape[-1]), dim=-1)
        tops = [
            tuple(zip(i, v, strict=True))
            for i, v in zip(ids.tolist(), values.tolist(), strict=True)
        ]
    else:
        tops = [()] * len(tokens)
    return [
        TokenLogprob(token, lp, top) for token, lp, top in zip(tokens, chosen, tops, strict=True)
    ]


def choose_token(logits: torch.Tensor, row: Row) -> int:
    """The row's next token from its last-position ``logits``: argmax at temperature 0, else
    seeded top-p sampling."""
    sampling = row.request.sampling
    if sampling.temperature == 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / sampling.temperature, dim=-1)
    if sampling.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        keep = sorted_probs.cumsum(0) - sorted_probs < sampling.top_p
        keep[0] = True  # the likeliest token always stays (a top_p below float32's tiny)
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs, 1, generator=row.generator))
