"""Score items through any OpenAI-compatible endpoint (vLLM, lexlora serve, a hosted API).

Generation uses ``/v1/chat/completions`` (greedy, fixed seed). Option and answer likelihoods use
``/v1/completions`` with ``echo`` and ``logprobs`` where the endpoint offers them (vLLM does); where
it does not, options are scored by greedy generation (the option the answer starts with) and the
answer loss is reported as unavailable. Strengths other than 1 use the ``lora_scale`` extension.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from lexlora.errors import LexloraError
from lexlora.eval.metrics import normalize_answer
from lexlora.eval.tasks import EvalItem, option_texts


class EndpointScorer:
    def __init__(
        self, base_url: str, api_key: str, base_model: str, adapter_model: str, tokenizer_path: str
    ):
        import openai
        from transformers import AutoTokenizer

        url = base_url.rstrip("/")
        url = url if url.endswith("/v1") else url + "/v1"
        self.client = openai.OpenAI(base_url=url, api_key=api_key, max_retries=2, timeout=120)
        self.base_model = base_model
        self.adapter_model = adapter_model
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
        self.end = self.tokenizer.eos_token or ""
        self.model = adapter_model
        self.extra: dict = {}
        self.echo_supported: bool | None = None

    @contextmanager
    def variant(self, scale: float | None) -> Iterator[None]:
        previous = self.model, self.extra
        self.model = self.base_model if scale is None else self.adapter_model
        self.extra = {} if scale in (None, 1.0) else {"lora_scale": scale}
        try:
            yield
        finally:
            self.model, self.extra = previous

    def prompt_text(self, item: EvalItem) -> str:
        return self.tokenizer.apply_chat_template(
            item.prompt, tokenize=False, add_generation_prompt=True
        )

    def _continuation_logprob(self, prompt: str, continuation: str) -> float | None:
        """Sum of the continuation's token log-probs via echo; None if the endpoint lacks echo."""
        if self.echo_supported is False:
            return None
        import openai

        try:
            response = self.client.completions.create(
                model=self.model,
                prompt=prompt + continuation,
                max_tokens=1,
                echo=True,
                logprobs=0,
                temperature=0,
                extra_body=self.extra or None,
            )
        except openai.BadRequestError:
            self.echo_supported = False
            return None
        lp = response.choices[0].logprobs
        if lp is None or not lp.token_logprobs or lp.text_offset is None:
            self.echo_supported = False
            return None
        self.echo_supported = True
        total = 0.0
        for offset, value in zip(lp.text_offset, lp.token_logprobs, strict=False):
            if len(prompt) <= offset < len(prompt) + len(continuation) and value is not None:
                total += value
        return total

    def choice_logprobs(self, items: Sequence[EvalItem]) -> list[list[float]]:
        scores = []
        for item in items:
            prompt = self.prompt_text(item)
            options = option_texts(item, self.end)
            row = [self._continuation_logprob(prompt, text) for text in options]
            if any(v is None for v in row):
                row = self._choice_by_generation(item)
            scores.append(row)
        return scores

    def _choice_by_generation(self, item: EvalItem) -> list[float]:
        answer = normalize_answer(self.generate([item], 16)[0])
        return [
            0.0 if answer.startswith(normalize_answer(c)) and normalize_answer(c) else -math.inf
            for c in item.choices
        ]

    def answer_nll(self, items: Sequence[EvalItem]) -> list[float]:
        results = []
        for item in items:
            prompt = self.prompt_text(item)
            continuation = item.reference + self.end
            total = self._continuation_logprob(prompt, continuation)
            if total is None:
                return [math.nan] * len(items)
            n = len(self.tokenizer(continuation, add_special_tokens=False)["input_ids"])
            results.append(-total / max(n, 1))
        return results

    def generate(self, items: Sequence[EvalItem], max_new_tokens: int) -> list[str]:
        import openai

        outputs = []
        for item in items:
            try:
                response = self.client.chat.completions.create(
                    model=self.model,
                    messages=item.prompt,
                    max_tokens=max_new_tokens,
                    temperature=0,
                    seed=0,
                    extra_body=self.extra or None,
                )
            except openai.APIStatusError as exc:
                raise LexloraError(
                    f"endpoint: {exc.status_code} for model {self.model}: {exc.message}"
                ) from None
            except openai.APIConnectionError:
                raise LexloraError(f"endpoint {self.client.base_url}: cannot connect") from None
            outputs.append((response.choices[0].message.content or "").strip())
        return outputs
