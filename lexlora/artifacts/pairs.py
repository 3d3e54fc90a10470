"""The training row: chat ``messages`` (an instruction pair) or plain ``text``, plus provenance
``meta``.

A chat row is trained on its assistant answer only; a ``text`` row (reading-comprehension text,
:mod:`lexlora.data.builders.reading`) is trained as plain completion, on every token. A row has
exactly one of the two forms, and its JSON holds only that one.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, model_serializer, model_validator

KNOWLEDGE_PRESENCE = "knowledge_presence"  # the task of a closed-book clause-presence fact
KNOWLEDGE_LABEL = "knowledge_label"  # the task of a closed-book metadata-label fact


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
    """A training row: ``messages`` (chat, loss on the answer) or ``text`` (loss on every token)."""

    messages: list[dict[str, str]] | None = None
    text: str | None = Field(None, description="Plain-completion text, without a chat template.")
    meta: PairMeta

    @model_validator(mode="after")
    def _one_form(self) -> Pair:
        if (self.messages is None) == (self.text is None):
            raise ValueError("a row has either 'messages' or 'text', not both or neither")
        return self

    @model_serializer(mode="wrap")
    def _only_its_form(self, handler) -> dict[str, Any]:
        data = handler(self)
        return {k: v for k, v in data.items() if k not in ("messages", "text") or v is not None}

    @property
    def is_text(self) -> bool:
        return self.text is not None

    @property
    def question(self) -> str:
        """The user message of a chat row."""
        return next(m["content"] for m in self.messages or () if m["role"] == "user")

    @property
    def answer(self) -> str:
        """The assistant message of a chat row."""
        return next(m["content"] for m in self.messages or () if m["role"] == "assistant")

    @property
    def contents(self) -> tuple[str, ...]:
        """Every text the row trains on (question and answer, or the text): for leakage checks."""
        return (self.text,) if self.text is not None else (self.question, self.answer)


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


def make_text_row(
    text: str, *, doc_id: str, builder: str, span: tuple[int, int], task: str, **extra: Any
) -> Pair:
    """A plain-completion row (trained on every token), with the same provenance as a pair."""
    meta = PairMeta(doc_id=doc_id, builder=builder, span=span, task=task, **extra)
    return Pair(text=text, meta=meta)
