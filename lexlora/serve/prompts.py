"""Prompts → token ids with the base model's tokenizer (chat: its chat template), and token ids
→ the text shown for them in log-probs. A new-token adapter's prompts use its own tokenizer (the
base's plus its terms, saved in its version folder): :func:`encoder_for`."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from lexlora.serve.errors import bad_request


class PromptEncoder:
    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = len(tokenizer)
        self.token_text = lru_cache(maxsize=65536)(self._token_text)

    def completion(self, prompt: str | list[int], param: str = "prompt") -> list[int]:
        """Token ids of a plain prompt (text: with the tokenizer's special tokens, e.g. BOS;
        token ids: checked against the vocabulary and used as they are)."""
        if isinstance(prompt, str):
            return list(self.tokenizer(prompt, add_special_tokens=True)["input_ids"])
        for i, token in enumerate(prompt):
            if token >= self.vocab_size:
                message = f"'{param}.{i}': token id {token} is not in the vocabulary"
                raise bad_request(f"{message} (0–{self.vocab_size - 1})", param=param)
        return list(prompt)

    def text(self, ids: list[int]) -> str:
        """The text of token ids as a completion echoes it (special tokens kept)."""
        return self.tokenizer.decode(
            ids, skip_special_tokens=False, clean_up_tokenization_spaces=False
        )

    def _token_text(self, token: int) -> str:
        return self.text([token])

    def chat(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of ``messages`` rendered by the chat template, ready for the assistant."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise bad_request("the base model has no chat template: use /v1/completions")
        try:
            text = self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        except Exception as exc:  # the template rejects these messages (e.g. role order)
            message = f"the chat template rejected the messages: {exc}"
            raise bad_request(message, param="messages") from None
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])


@lru_cache(maxsize=256)
def _adapter_encoder(folder: str) -> PromptEncoder | None:
    """A new-token adapter's own encoder, None for any other method (read once per version
    folder: a published version never changes)."""
    from transformers import AutoTokenizer

    from lexlora.artifacts.adapter import adapter_method, has_new_tokens
    from lexlora.errors import LexloraError

    try:
        if not has_new_tokens(adapter_method(Path(folder))):
            return None
    except LexloraError:  # not a readable adapter: loading it says so
        return None
    return PromptEncoder(AutoTokenizer.from_pretrained(folder))


def encoder_for(base: PromptEncoder, folder: Path | None) -> PromptEncoder:
    """The encoder for a request on the adapter version in ``folder`` (None: the base model):
    a new-token adapter's own tokenizer (cached per version folder), else ``base``."""
    own = None if folder is None else _adapter_encoder(str(folder))
    return own or base
