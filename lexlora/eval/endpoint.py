"""Score items through any OpenAI-compatible endpoint (lexlora serve, vLLM, a hosted API).

Generation uses ``/v1/chat/completions`` (greedy, fixed seed). Option and answer likelihoods are
scored by prompt log-likelihood on ``/v1/completions`` (``echo``, ``logprobs``, ``max_tokens`` 0,
else 1) with the prompt sent as token ids built exactly as the in-process scorer builds them, so
every figure through ``lexlora serve`` equals the in-process one. An endpoint without ``echo``
scores options by greedy generation (the option the answer starts with) and reports the answer
loss as unavailable. Strengths other than 1 use the ``lora_scale`` extension.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from lexlora.errors import LexloraError
from lexlora.eval.metrics import normalize_answer
from lexlora.eval.tasks import EvalItem, option_texts

PROMPTS_PER_REQUEST = 16  # sequences scored by one /v1/completions request
CONCURRENT_REQUESTS = 2  # scoring requests in flight at once (the server batches them together)
GENERATIONS_IN_FLIGHT = 8  # chat requests in flight at once
NEXT_TOKEN_LOGPROBS = 20  # top log-probs asked for single-token options (vLLM's default limit)


class EchoUnsupported(Exception):
    """The endpoint does not return prompt log-probabilities."""


class EndpointScorer:
    def __init__(
        self, base_url: str, api_key: str, base_model: str, adapter_model: str, tokenizer_path: str
    ):
        import openai
        from transformers import AutoTokenizer

        url = base_url.rstrip("/")
        url = url if url.endswith("/v1") else url + "/v1"
        self.client = openai.OpenAI(base_url=url, api_key=api_key, max_retries=2, timeout=300)
        self.base_model = base_model
        self.adapter_model = adapter_model
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
        self.end = self.tokenizer.eos_token or ""
        self.model = adapter_model
        self.extra: dict = {}
        self.echo_supported: bool | None = None
        self._score_tokens = 0  # max_tokens the endpoint accepts with echo (0, else 1)
        self.next_token_supported: bool | None = None  # top log-probs of the next token
        self._texts: Counter[str] | None = None  # token text → how many tokens have it
        self.read_from_next_token = 0  # items whose options came from the next-token top log-probs

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

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _failure(self, exc: Exception) -> Exception:
        """A one-line error for a failed call (a status from the endpoint, or no connection)."""
        import openai

        if isinstance(exc, openai.APIStatusError):
            return LexloraError(
                f"endpoint: {exc.status_code} for model {self.model}: {exc.message}"
            )
        if isinstance(exc, openai.APIConnectionError):
            return LexloraError(f"endpoint {self.client.base_url}: cannot connect")
        return exc

    # -- prompt log-likelihoods -----------------------------------------------------------------

    def _token_logprobs(
        self, sequences: list[list[int]], owners: list[int] | None = None
    ) -> list[list[float]]:
        """Per sequence, the log-prob of each token after the first (via echo); raises
        :class:`EchoUnsupported` for an endpoint without it. Sequences with the same ``owners``
        entry (one item's options) go in the same request, so the server encodes their common
        prompt once."""
        if self.echo_supported is False:
            raise EchoUnsupported
        batches: list[list[list[int]]] = []
        owners = owners if owners is not None else list(range(len(sequences)))
        for n, seq in enumerate(sequences):
            new_owner = n == 0 or owners[n] != owners[n - 1]
            if new_owner and (not batches or self._full(batches[-1], owners, n)):
                batches.append([])
            batches[-1].append(seq)
        with ThreadPoolExecutor(CONCURRENT_REQUESTS) as pool:
            scored = list(pool.map(self._score_batch, batches))
        return [row for batch in scored for row in batch]

    @staticmethod
    def _full(batch: list[list[int]], owners: list[int], n: int) -> bool:
        """Whether the owner starting at ``n`` no longer fits in ``batch`` (an owner larger
        than a request goes in one of its own)."""
        size = next((m for m in range(n, len(owners)) if owners[m] != owners[n]), len(owners)) - n
        return len(batch) + size > PROMPTS_PER_REQUEST

    def _score_batch(self, batch: list[list[int]]) -> list[list[float]]:
        import openai

        while True:
            try:
                response = self.client.completions.create(
                    model=self.model,
                    prompt=batch,
                    max_tokens=self._score_tokens,
                    echo=True,
                    logprobs=0,
                    temperature=0,
                    extra_body=self.extra or None,
                )
                break
            except openai.BadRequestError:
                if self._score_tokens == 0:  # an endpoint that wants at least one new token
                    self._score_tokens = 1
                    continue
                self.echo_supported = False
                raise EchoUnsupported from None
            except openai.OpenAIError as exc:
                raise self._failure(exc) from None
        choices = sorted(response.choices, key=lambda c: c.index)
        rows = []
        for ids, choice in zip(batch, choices, strict=True):
            lp = choice.logprobs
            values = list(lp.token_logprobs or []) if lp is not None else []
            if len(values) < len(ids) or any(v is None for v in values[1 : len(ids)]):
                self.echo_supported = False
                raise EchoUnsupported
            rows.append([float(v) for v in values[1 : len(ids)]])
        self.echo_supported = True
        return rows

    def _continuations(
        self, pairs: list[tuple[list[int], list[int]]], owners: list[int] | None = None
    ) -> list[list[float]]:
        """Per (prompt ids, continuation ids), the continuation tokens' log-probs."""
        scores = self._token_logprobs([p + c for p, c in pairs], owners)
        return [row[len(p) - 1 :] for (p, _), row in zip(pairs, scores, strict=True)]

    def choice_logprobs(self, items: Sequence[EvalItem]) -> list[list[float]]:
        """Per item, each option's log-probability (as :class:`LocalScorer` scores it). Items
        whose options are single tokens (Yes/No) are read from the next-token distribution
        (:meth:`_next_token_scores`); the others, and any option outside the endpoint's top
        log-probs, by echo log-likelihood."""
        prompts = [self._ids(self.prompt_text(item)) for item in items]
        options = [[self._ids(text) for text in option_texts(i, self.end)] for i in items]
        scores: list[list[float] | None] = [None] * len(items)
        quick = [n for n, opts in enumerate(options) if all(self._one_token(o) for o in opts)]
        if quick and self.next_token_supported is not False:
            read = self._next_token_scores([prompts[n] for n in quick], [options[n] for n in quick])
            for n, row in zip(quick, read, strict=True):
                scores[n] = row
            self.read_from_next_token += sum(row is not None for row in read)
        pairs, owners = [], []
        rest = [n for n in range(len(items)) if scores[n] is None]
        for n in sorted(rest, key=lambda n: len(prompts[n])):  # similar lengths: little padding
            for option in options[n]:
                pairs.append((prompts[n], option))
                owners.append(n)
        if pairs:
            try:
                scored = self._continuations(pairs, owners)
            except EchoUnsupported:
                return [self._choice_by_generation(item) for item in items]
            for n in rest:
                scores[n] = []
            for n, row in zip(owners, scored, strict=True):
                scores[n].append(sum(row))  # type: ignore[union-attr]
        return [row or [] for row in scores]

    def _one_token(self, ids: list[int]) -> bool:
        """One token whose text no other token of the vocabulary has (a top-log-probs entry is
        keyed by text, so only then does it name this token)."""
        if len(ids) != 1:
            return False
        if self._texts is None:
            self._texts = Counter(self._text([i]) for i in range(len(self.tokenizer)))
        return self._texts[self._text(ids)] == 1

    def _text(self, ids: list[int]) -> str:
        """Token ids as an OpenAI server shows them in log-probs (special tokens kept)."""
        return self.tokenizer.decode(
            ids, skip_special_tokens=False, clean_up_tokenization_spaces=False
        )

    def _next_token_scores(
        self, prompts: list[list[int]], options: list[list[list[int]]]
    ) -> list[list[float] | None]:
        """Per prompt, its single-token options' log-probs read from the top
        ``NEXT_TOKEN_LOGPROBS`` of its next-token distribution (one generated token, not
        echoed: the prompt is encoded once and only its last position reaches the vocabulary);
        None where an option is not among them, or for all when the endpoint refuses."""
        order = sorted(range(len(prompts)), key=lambda n: len(prompts[n]))
        batches = [
            order[i : i + PROMPTS_PER_REQUEST] for i in range(0, len(order), PROMPTS_PER_REQUEST)
        ]
        with ThreadPoolExecutor(CONCURRENT_REQUESTS) as pool:
            tops = list(pool.map(lambda b: self._top_logprobs([prompts[n] for n in b]), batches))
        out: list[list[float] | None] = [None] * len(prompts)
        for batch, top in zip(batches, tops, strict=True):
            if top is None:
                continue
            for n, dist in zip(batch, top, strict=True):
                texts = [self._text(o) for o in options[n]]
                if dist is not None and all(t in dist for t in texts):
                    out[n] = [dist[t] for t in texts]
        return out

    def _top_logprobs(self, batch: list[list[int]]) -> list[dict[str, float] | None] | None:
        """The next-token top log-probs of each prompt, by token text (None for a prompt whose
        next token ended the answer: no log-probs are given for it); None if refused."""
        import openai

        try:
            response = self.client.completions.create(
                model=self.model,
                prompt=batch,
                max_tokens=1,
                logprobs=NEXT_TOKEN_LOGPROBS,
                temperature=0,
                extra_body=self.extra or None,
            )
        except openai.BadRequestError:
            self.next_token_supported = False
            return None
        except openai.OpenAIError as exc:
            raise self._failure(exc) from None
        self.next_token_supported = True
        tops: list[dict[str, float] | None] = []
        for choice in sorted(response.choices, key=lambda c: c.index):
            lp = choice.logprobs
            first = lp.top_logprobs[0] if lp is not None and lp.top_logprobs else None
            tops.append(dict(first) if first else None)
        return tops

    def _choice_by_generation(self, item: EvalItem) -> list[float]:
        answer = normalize_answer(self.generate([item], 16)[0])
        return [
            0.0 if answer.startswith(normalize_answer(c)) and normalize_answer(c) else -math.inf
            for c in item.choices
        ]

    def answer_nll(self, items: Sequence[EvalItem]) -> list[float]:
        """Mean negative log-likelihood per reference-answer token (NaN without echo)."""
        pairs = [(self._ids(self.prompt_text(i)), self._ids(i.reference + self.end)) for i in items]
        order = sorted(range(len(pairs)), key=lambda n: len(pairs[n][0]) + len(pairs[n][1]))
        try:
            scored = self._continuations([pairs[n] for n in order])
        except EchoUnsupported:
            return [math.nan] * len(items)
        nll = [0.0] * len(items)
        for n, row in zip(order, scored, strict=True):
            nll[n] = -sum(row) / max(len(row), 1)
        return nll

    def generate(self, items: Sequence[EvalItem], max_new_tokens: int) -> list[str]:
        """Greedy chat answers, ``GENERATIONS_IN_FLIGHT`` at a time (the server batches them)."""
        with ThreadPoolExecutor(GENERATIONS_IN_FLIGHT) as pool:
            return list(pool.map(lambda item: self._answer(item, max_new_tokens), items))

    def _answer(self, item: EvalItem, max_new_tokens: int) -> str:
        import openai

        try:
            response = self.client.chat.completions.create(
                model=self.model,
                messages=item.prompt,
                max_tokens=max_new_tokens,
                temperature=0,
                seed=0,
                extra_body=self.extra or None,
            )
        except openai.OpenAIError as exc:
            raise self._failure(exc) from None
        return (response.choices[0].message.content or "").strip()
