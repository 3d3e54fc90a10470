"""The instruction pair: chat ``messages`` plus provenance ``meta``."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, Field

_SPACES = re.compile(r"\s+")


class PairMeta(BaseModel):
    """Where a pair came from: ``text[span[0]:span[1]]`` of the cleaned, scrubbed document."""

    doc_id: str
    builder: str
    span: tuple[int, int]
    task: str = Field(description="What the pair asks: definition, section, obligation, ...")
    choices: list[str] | None = Field(None, description="Options, for classification pairs.")
    label: str | None = Field(None, description="The correct option, for classification pairs.")
    category: str | None = Field(None, description="The taxonomy category of a presence pair.")
    teacher_model: str | None = Field(None, description="The model that wrote a teacher pair.")
    prompt_id: str | None = Field(None, description="The teacher prompt (id@version).")


class Pair(BaseModel):
    messages: list[dict[str, str]]
    meta: PairMeta

    @property
    def question(self) -> str:
        return next(m["content"] for m in self.messages if m["role"] == "user")

    @property
    def answer(self) -> str:
        return next(m["content"] for m in self.messages if m["role"] == "assistant")


def make_pair(
    system: str,
    question: str,
    answer: str,
    *,
    doc_id: str,
    builder: str,
    span: tuple[int, int],
    task: str,
    **extra: Any,
) -> Pair:
    messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    if system:
        messages.insert(0, {"role": "system", "content": system})
    meta = PairMeta(doc_id=doc_id, builder=builder, span=span, task=task, **extra)
    return Pair(messages=messages, meta=meta)


def flatten(text: str) -> str:
    """Collapse the hard wraps and indentation of plain-text documents into single spaces."""
    return _SPACES.sub(" ", text).strip()
