"""Engine log-probs (:class:`TokenLogprob`, token ids) → OpenAI's two shapes.

- completions (legacy): ``tokens``, ``token_logprobs``, ``top_logprobs`` (a dict per token: the
  ``k`` likeliest plus the token itself, as vLLM does, so up to ``k + 1`` keys; tokens that
  decode to the same text share a key, holding the better log-prob) and
  ``text_offset``, the character where each token starts in the choice's text;
- chat: ``content``, a list of ``{token, logprob, bytes, top_logprobs: [k × {token, logprob,
  bytes}]}``.

A token is shown as its own decoded text (special tokens included); the echoed prompt's first
token has no context, so its log-prob and alternatives are ``None``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from lexlora.serve.engines.base import TokenLogprob
from lexlora.serve.protocol import ChatLogprobs, ChatTokenLogprob, CompletionLogprobs, TopLogprob

TokenText = Callable[[int], str]


class LegacyLogprobs:
    """Builds a completion's :class:`CompletionLogprobs` piece by piece (a stream's chunks
    continue the text offsets of the ones before)."""

    def __init__(self, token_text: TokenText) -> None:
        self._text = token_text
        self.offset = 0  # characters of the choice's text covered so far

    def first_token(self, token: int) -> CompletionLogprobs:
        """The echoed prompt's first token (no log-prob)."""
        text = self._text(token)
        piece = CompletionLogprobs(
            tokens=[text], token_logprobs=[None], top_logprobs=[None], text_offset=[self.offset]
        )
        self.offset += len(text)
        return piece

    def piece(self, entries: Sequence[TokenLogprob]) -> CompletionLogprobs:
        tokens, values, tops, offsets = [], [], [], []
        for entry in entries:
            text = self._text(entry.token)
            tokens.append(text)
            values.append(entry.logprob)
            top: dict[str, float] = {}
            for token, lp in entry.top:  # best first: two tokens with one text keep the better
                top.setdefault(self._text(token), lp)
            top.setdefault(text, entry.logprob)
            tops.append(top)
            offsets.append(self.offset)
            self.offset += len(text)
        return CompletionLogprobs(
            tokens=tokens, token_logprobs=values, top_logprobs=tops, text_offset=offsets
        )

    def skip(self, text: str) -> None:
        """Text in the choice that no log-prob covers (an echoed prompt scored without k)."""
        self.offset += len(text)


def joined(pieces: Sequence[CompletionLogprobs]) -> CompletionLogprobs:
    return CompletionLogprobs(
        tokens=[t for p in pieces for t in p.tokens],
        token_logprobs=[v for p in pieces for v in p.token_logprobs],
        top_logprobs=[t for p in pieces for t in p.top_logprobs],
        text_offset=[o for p in pieces for o in p.text_offset],
    )


def chat_logprobs(entries: Sequence[TokenLogprob], token_text: TokenText) -> ChatLogprobs:
    def top(token: int, logprob: float) -> TopLogprob:
        text = token_text(token)
        return TopLogprob(token=text, logprob=logprob, bytes=list(text.encode()))

    content = []
    for entry in entries:
        own = top(entry.token, entry.logprob)
        alternatives = [top(token, lp) for token, lp in entry.top]
        content.append(ChatTokenLogprob(**own.model_dump(), top_logprobs=alternatives))
    return ChatLogprobs(content=content)
