"""Embedding rows that prompt-tuned and new-token adapters bring, beside the base vocabulary.

The embedded engine keeps one base model. Each such adapter gets a range of *engine ids* from
``V`` (the base vocabulary) up: a prompt-tuned adapter's virtual tokens (prepended to each of its
rows' prompts, positions ``0..n-1``, as PEFT runs them offline), a new-token adapter's terms (its
tokenizer's ids ``V..V+k-1``). A forward pass embeds ids below ``V`` with the base and the others
from :attr:`Extensions.rows_in`; the logits of the extension columns come from the final hidden
state times :attr:`Extensions.rows_out`, and are ``-inf`` for every column that is not the row's
own terms, so each row's softmax is exactly the one over its own vocabulary. A new-token
adapter's ids start at its ``base_vocab_size`` (its base tokenizer's length), which may be below
``V`` when the model's embedding is padded: its rows also get ``-inf`` for the padding columns,
which offline (resized to the tokenizer) do not exist. Ranges are never
reused while the engine runs (an unloaded adapter leaves a masked hole), so ids in flight stay
valid.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from lexlora.adapter_methods import mean_rows, prompt_embeddings, trained_token_rows
from lexlora.artifacts.adapter import has_new_tokens, read_new_tokens
from lexlora.serve.engines.base import (
    EngineError,
    Finished,
    PromptLogprobs,
    TextDelta,
    TokenLogprob,
)


@dataclass(frozen=True)
class Extension:
    """One adapter's rows: engine ids ``start .. start + virtual + new - 1``."""

    start: int
    virtual: int  # prompt tuning: virtual tokens, first in the range
    new: int  # new tokens: the adapter's ids base_vocab .. base_vocab + new - 1
    vocab: int  # the engine's base rows (the model's embedding, maybe padded past the tokenizer)
    base_vocab: int  # the adapter's first new id (its base tokenizer's length)
    tokenizer: Any | None = None

    def to_engine(self, ids: list[int]) -> list[int]:
        """A prompt in the adapter's ids → engine ids, its virtual tokens first."""
        shift = self.start + self.virtual - self.base_vocab
        virtual = list(range(self.start, self.start + self.virtual))
        return virtual + [i if i < self.base_vocab else i + shift for i in ids]

    def to_adapter(self, token: int) -> int:
        """An engine id leaving the engine → the adapter's id."""
        shift = self.start + self.virtual - self.base_vocab
        return token if token < self.vocab else token - shift

    def decode(self, ids: list[int]) -> str:
        """Generated engine ids as text, with the adapter's tokenizer (its terms included)."""
        assert self.tokenizer is not None
        return self.tokenizer.decode(
            [self.to_adapter(i) for i in ids],
            skip_special_tokens=True,
            clean_up_tokenization_spaces=False,
        )

    def entry(self, e: TokenLogprob) -> TokenLogprob:
        top = tuple((self.to_adapter(t), lp) for t, lp in e.top)
        return replace(e, token=self.to_adapter(e.token), top=top)

    def event(self, event: Any) -> Any:
        """An engine event with its token ids in the adapter's space, without virtual tokens."""
        if isinstance(event, PromptLogprobs):
            kept = event.entries[self.virtual :]  # entry j is token j + 1 of the engine prompt
            return replace(event, entries=tuple(self.entry(e) for e in kept))
        if isinstance(event, TextDelta):
            return replace(event, logprobs=tuple(self.entry(e) for e in event.logprobs))
        if isinstance(event, Finished):
            return replace(
                event,
                prompt_tokens=event.prompt_tokens - self.virtual,
                logprobs=tuple(self.entry(e) for e in event.logprobs),
            )
        return event


class Extensions:
    """The extension rows of every loaded prompt-tuned or new-token adapter."""

    def __init__(self, model: Any, base_tokenizer: Any) -> None:
        self._model = model
        self._base_tokenizer = base_tokenizer
        weight = model.get_input_embeddings().weight
        self.vocab = weight.shape[0]
        self.rows_in = weight.new_zeros((0, weight.shape[1]))
        self.rows_out = weight.new_zeros((0, weight.shape[1]))
        self.owner: list[str | None] = []  # per extension column: whose term it is (None: virtual)
        self.by_adapter: dict[str, Extension] = {}
        self._own: dict[str, torch.Tensor] = {}  # adapter → its columns (bool), made on first use

    def __bool__(self) -> bool:
        return bool(self.by_adapter)

    def add(self, name: str, folder: Path, method: str) -> None:
        """Give ``name``'s rows a new range (prompt tuning, new tokens; LoRA adds none)."""
        start = self.vocab + len(self.owner)
        if method == "prompt_tuning":
            rows = prompt_embeddings(folder).to(self.rows_in.dtype)
            self._append(rows, torch.zeros_like(rows), [None] * len(rows))
            self.by_adapter[name] = Extension(start, len(rows), 0, self.vocab, self.vocab)
        elif has_new_tokens(method):
            from transformers import AutoTokenizer

            record = read_new_tokens(folder)
            terms, base_vocab = record["terms"], int(record["base_vocab_size"])
            if base_vocab > self.vocab:
                raise EngineError(
                    f"{Path(folder).name}: new tokens start at {base_vocab}, past the base "
                    f"model's {self.vocab} embedding rows (another base?)"
                )
            rows = trained_token_rows(folder).to(self.rows_in.dtype)
            head = self._model.get_output_embeddings().weight
            out = mean_rows(head.detach(), self._base_tokenizer, terms)  # as add_terms gives
            self._append(rows, out, [name] * len(rows))
            tokenizer = AutoTokenizer.from_pretrained(str(folder))
            ext = Extension(start, 0, len(rows), self.vocab, base_vocab, tokenizer)
            self.by_adapter[name] = ext

    def remove(self, name: str) -> None:
        ext = self.by_adapter.pop(name, None)
        if ext is None:
            return
        first = ext.start - self.vocab
        for column in range(first, first + ext.virtual + ext.new):
            self.owner[column] = "\0"  # a hole: never the row's own column
        self._own.clear()
        if not self.by_adapter:  # nothing in flight can use them: start afresh
            self.rows_in, self.rows_out, self.owner = self.rows_in[:0], self.rows_out[:0], []

    def _columns(self, adapter: str) -> torch.Tensor:
        """``[extension columns]`` bool: the columns of ``adapter``'s own terms."""
        if adapter not in self._own:
            self._own[adapter] = torch.tensor([o == adapter for o in self.owner], dtype=torch.bool)
        return self._own[adapter]

    def _append(self, rows_in: torch.Tensor, rows_out: torch.Tensor, owners: list) -> None:
        self.rows_in = torch.cat([self.rows_in, rows_in])
        self.rows_out = torch.cat([self.rows_out, rows_out])
        self.owner += owners
        self._own.clear()

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Input embeddings of engine ``ids`` (base rows below the vocabulary, ours above)."""
        table = self._model.get_input_embeddings()
        extended = ids >= self.vocab
        embeds = table(ids.clamp(max=self.vocab - 1))
        if bool(extended.any()):
            embeds[extended] = self.rows_in[ids[extended] - self.vocab]
        return embeds

    def logits(self, logits: torch.Tensor, hidden: torch.Tensor, adapters: list[str]):
        """``logits`` ``[rows, width, V]`` extended by each row's own term columns."""
        extra = hidden @ self.rows_out.T
        own = torch.stack([self._columns(a) for a in adapters])
        extra = extra.masked_fill(~own[:, None, :], float("-inf"))
        for i, adapter in enumerate(adapters):  # new tokens follow the tokenizer, not the padding:
            ext = self.by_adapter.get(adapter)  # its base rows past them do not exist offline
            if ext is not None and ext.new and ext.base_vocab < self.vocab:
                logits[i, :, ext.base_vocab :] = float("-inf")
        return torch.cat([logits, extra.to(logits.dtype)], dim=-1)
