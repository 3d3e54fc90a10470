"""Engine output → OpenAI objects: whole responses and server-sent-event chunks.

A stream is ``data: {chunk}\\n\\n`` lines ending with ``data: [DONE]``; chat streams open with a
role chunk, completion streams with ``echo`` with the echoed prompt (and its log-probs); a final
chunk carries the finish reason; ``stream_options.include_usage`` adds a last chunk with ``usage``
and no choices. With log-probs asked for, every chunk carries those of the tokens it brings.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from lexlora.serve.engines.base import Finished, Generation, PromptLogprobs, TextDelta
from lexlora.serve.logprobs import LegacyLogprobs, TokenText, chat_logprobs, joined
from lexlora.serve.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatDelta,
    ChatLogprobs,
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    Usage,
    new_id,
    now,
)

DONE = "data: [DONE]\n\n"


def sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False, separators=(',', ':'))}\n\n"


@dataclass
class Echo:
    """The prompt a completion echoes: its text and token ids."""

    text: str
    ids: list[int]


@dataclass
class ResponseFormat:
    """Formats one request's output; ``chat`` picks chat.completion(.chunk) over text_completion.
    ``logprobs`` (None: not asked) is whether each choice carries log-probs; ``echo`` the prompt
    of a completion that echoes it (one per choice, by index)."""

    model: str
    chat: bool
    token_text: TokenText = str
    logprobs: bool = False
    echo: list[Echo] | None = None
    id: str = ""
    created: int = field(default_factory=now)
    _stream_logprobs: LegacyLogprobs | None = None

    def __post_init__(self) -> None:
        self.id = self.id or new_id("chatcmpl" if self.chat else "cmpl")

    # -- whole responses ------------------------------------------------------------------------

    def whole(self, results: Sequence[Generation]) -> dict:
        prompt = sum(r.prompt_tokens for r in results)
        usage = Usage.of(prompt, sum(r.completion_tokens for r in results))
        common = {"id": self.id, "created": self.created, "model": self.model, "usage": usage}
        if self.chat:
            (result,) = results
            choice = ChatChoice(
                message=AssistantMessage(content=result.text),
                logprobs=self._chat_logprobs(result.logprobs),
                finish_reason=result.finish_reason,
            )
            return ChatCompletion(choices=[choice], **common).model_dump()
        choices = [self._completion_choice(i, r) for i, r in enumerate(results)]
        return Completion(choices=choices, **common).model_dump()

    def _completion_choice(self, index: int, result: Generation) -> CompletionChoice:
        echo = self.echo[index] if self.echo else None
        text = (echo.text if echo else "") + result.text
        logprobs = None
        if self.logprobs:
            builder = LegacyLogprobs(self.token_text)
            pieces = self._echo_pieces(builder, echo, result.prompt_logprobs)
            pieces.append(builder.piece(result.logprobs))
            logprobs = joined(pieces)
        return CompletionChoice(
            index=index, text=text, logprobs=logprobs, finish_reason=result.finish_reason
        )

    @staticmethod
    def _echo_pieces(
        builder: LegacyLogprobs, echo: Echo | None, scores: Sequence | None
    ) -> list[CompletionLogprobs]:
        """The echoed prompt's log-probs; the generated tokens' offsets then start after it."""
        if echo is None:
            return []
        pieces = []
        if scores is not None and echo.ids:
            pieces = [builder.first_token(echo.ids[0]), builder.piece(scores)]
        builder.offset = len(echo.text)
        return pieces

    def _chat_logprobs(self, entries: Sequence) -> ChatLogprobs | None:
        return chat_logprobs(entries, self.token_text) if self.logprobs else None

    # -- streams --------------------------------------------------------------------------------

    def opening(self) -> str | None:
        """The chat role chunk; a completion's echoed prompt when no log-probs are asked."""
        if self.chat:
            return self._chat_chunk(ChatDelta(role="assistant", content=""), None, None)
        if self.echo and not self.logprobs:
            return self._completion_chunk(self.echo[0].text, None, None)
        return None

    def prompt(self, event: PromptLogprobs) -> str | None:
        """A completion's echoed prompt with its log-probs."""
        if self.chat or not self.echo or not self.logprobs:
            return None
        echo = self.echo[0]
        builder = self._builder()
        logprobs = joined(self._echo_pieces(builder, echo, event.entries))
        return self._completion_chunk(echo.text, logprobs, None)

    def delta(self, event: TextDelta) -> str:
        if self.chat:
            logprobs = self._chat_logprobs(event.logprobs)
            return self._chat_chunk(ChatDelta(content=event.text), logprobs, None)
        logprobs = self._builder().piece(event.logprobs) if self.logprobs else None
        return self._completion_chunk(event.text, logprobs, None)

    def finish(self, event: Finished) -> str:
        reason = event.finish_reason
        if self.chat:
            logprobs = self._chat_logprobs(event.logprobs) if event.logprobs else None
            return self._chat_chunk(ChatDelta(), logprobs, reason)
        logprobs = self._builder().piece(event.logprobs) if self.logprobs else None
        return self._completion_chunk("", logprobs, reason)

    def usage(self, prompt_tokens: int, completion_tokens: int) -> str:
        usage = Usage.of(prompt_tokens, completion_tokens)
        common = {"id": self.id, "created": self.created, "model": self.model}
        if self.chat:
            return sse(ChatCompletionChunk(choices=[], usage=usage, **common).model_dump())
        return sse(Completion(choices=[], usage=usage, **common).model_dump())

    def _builder(self) -> LegacyLogprobs:
        if self._stream_logprobs is None:
            self._stream_logprobs = LegacyLogprobs(self.token_text)
        return self._stream_logprobs

    def _chat_chunk(self, delta: ChatDelta, logprobs: ChatLogprobs | None, reason: str | None):
        common = {"id": self.id, "created": self.created, "model": self.model}
        choice = ChatChunkChoice(delta=delta, logprobs=logprobs, finish_reason=reason)
        return sse(ChatCompletionChunk(choices=[choice], **common).model_dump(exclude_none=False))

    def _completion_chunk(
        self, text: str, logprobs: CompletionLogprobs | None, reason: str | None
    ) -> str:
        common = {"id": self.id, "created": self.created, "model": self.model}
        choice = CompletionChoice(text=text, logprobs=logprobs, finish_reason=reason)
        return sse(Completion(choices=[choice], **common).model_dump())
