"""Prompts → token ids with the base model's tokenizer (chat: its chat template)."""

from __future__ import annotations

from typing import Any

from lexlora.serve.errors import bad_request


class PromptEncoder:
    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def completion(self, prompt: str) -> list[int]:
        """Token ids of a plain prompt (with the tokenizer's special tokens, e.g. BOS)."""
        return list(self.tokenizer(prompt, add_special_tokens=True)["input_ids"])

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
