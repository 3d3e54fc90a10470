"""Engine output → OpenAI objects: whole responses and server-sent-event chunks.

A stream is ``data: {chunk}\\n\\n`` lines ending with ``data: [DONE]``; chat streams open with a
role chunk; a final chunk carries the finish reason; ``stream_options.include_usage`` adds a last
chunk with ``usage`` and no choices.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from lexlora.serve.engines.base import Generation
from lexlora.serve.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatDelta,
    Completion,
    CompletionChoice,
    Usage,
    new_id,
    now,
)

DONE = "data: [DONE]\n\n"


def sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False, separators=(',', ':'))}\n\n"


@dataclass
class ResponseFormat:
    """Formats one request's output; ``chat`` picks chat.completion(.chunk) over text_completion."""

    model: str
    chat: bool
    id: str = ""
    created: int = field(default_factory=now)

    def __post_init__(self) -> None:
        self.id = self.id or new_id("chatcmpl" if self.chat else "cmpl")

    def whole(self, result: Generation) -> dict:
        usage = Usage.of(result.prompt_tokens, result.completion_tokens)
        common = {"id": self.id, "created": self.created, "model": self.model, "usage": usage}
        if self.chat:
            choice = ChatChoice(
                message=AssistantMessage(content=result.text), finish_reason=result.finish_reason
            )
            return ChatCompletion(choices=[choice], **common).model_dump()
        choice = CompletionChoice(text=result.text, finish_reason=result.finish_reason)
        return Completion(choices=[choice], **common).model_dump()

    def opening(self) -> str | None:
        """The chat role chunk (completions have none)."""
        return self._chunk(ChatDelta(role="assistant", content=""), None) if self.chat else None

    def delta(self, text: str) -> str:
        return self._chunk(ChatDelta(content=text) if self.chat else text, None)

    def finish(self, reason: str) -> str:
        return self._chunk(ChatDelta() if self.chat else "", reason)

    def usage(self, prompt_tokens: int, completion_tokens: int) -> str:
        usage = Usage.of(prompt_tokens, completion_tokens)
        common = {"id": self.id, "created": self.created, "model": self.model}
        if self.chat:
            return sse(ChatCompletionChunk(choices=[], usage=usage, **common).model_dump())
        return sse(Completion(choices=[], usage=usage, **common).model_dump())

    def _chunk(self, content: ChatDelta | str, reason: str | None) -> str:
        common = {"id": self.id, "created": self.created, "model": self.model}
        if isinstance(content, ChatDelta):
            choice = ChatChunkChoice(delta=content, finish_reason=reason)
            chunk = ChatCompletionChunk(choices=[choice], **common)
            return sse(chunk.model_dump(exclude_none=False))
        completion = Completion(
            choices=[CompletionChoice(text=content, finish_reason=reason)], **common
        )
        return sse(completion.model_dump())
