"""Score items in-process with transformers + PEFT: option log-likelihoods, answer loss, generation.

The same code scores the base model (adapter disabled), the adapter, and the adapter at any
strength (PEFT's ``rescale_adapter_scale``), so the sweep and the base share every other detail.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from peft.helpers import rescale_adapter_scale

from lexlora.adapter_methods import load_adapted
from lexlora.artifacts.adapter import has_new_tokens
from lexlora.errors import LexloraError
from lexlora.eval.tasks import EvalItem, option_texts


class LocalScorer:
    """Scores items with one model; ``variant(scale)`` selects base (None) or adapter × scale."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        batch_size: int = 16,
        base: tuple[Any, Any] | None = None,
        supports_scale: bool = True,
    ):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.end = tokenizer.eos_token or ""
        self._base = base  # (model, tokenizer) scored as the base, when the adapter changes those
        self.supports_scale = supports_scale

    @contextmanager
    def variant(self, scale: float | None) -> Iterator[None]:
        """None: the base model (adapter disabled, or the separate base model of an adapter that
        brings its own vocabulary); a float: the adapter at that strength."""
        if scale is None and self._base is not None:
            adapted = self.model, self.tokenizer
            self.model, self.tokenizer = self._base
            try:
                yield
            finally:
                self.model, self.tokenizer = adapted
            return
        if scale is None:
            ctx = self.model.disable_adapter() if hasattr(self.model, "disable_adapter") else None
        elif scale != 1.0 and not self.supports_scale:
            raise LexloraError("this adapter's method has no strength: only LoRA can be scaled")
        else:
            ctx = rescale_adapter_scale(self.model, scale) if scale != 1.0 else None
        with ctx or nullcontext():
            yield

    def prompt_text(self, item: EvalItem) -> str:
        return self.tokenizer.apply_chat_template(
            item.prompt, tokenize=False, add_generation_prompt=True
        )

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    @torch.no_grad()
    def choice_logprobs(self, items: Sequence[EvalItem]) -> list[list[float]]:
        """Per item, the log-probability of each option (see :func:`option_texts`). Items are
        scored in batches of similar prompt length (:meth:`_options_batch`)."""
        prompts = [self._ids(self.prompt_text(item)) for item in items]
        options = [[self._ids(text) for text in option_texts(i, self.end)] for i in items]
        order = sorted(range(len(items)), key=lambda n: len(prompts[n]))
        scores: list[list[float]] = [[] for _ in items]
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            batch = self._options_batch([prompts[n] for n in rows], [options[n] for n in rows])
            for n, row in zip(rows, batch, strict=True):
                scores[n] = row
        return scores

    def _options_batch(
        self, prompts: list[list[int]], options: list[list[list[int]]]
    ) -> list[list[float]]:
        """Each prompt's options' log-probabilities in two passes: the prompts together
        (:meth:`_encode_prompts`) give every option's first token; then every option longer than
        one token, on a copy of its prompt's KV cache, gives the rest."""
        cache, mask, first = self._encode_prompts(prompts)
        scores = [[first[b, o[0]].item() for o in opts] for b, opts in enumerate(options)]
        tails = [(b, k, o) for b, opts in enumerate(options) for k, o in enumerate(opts) if o[1:]]
        if not tails:
            return scores
        index = torch.tensor([b for b, _, _ in tails])
        cache.batch_select_indices(index)
        width = max(len(o) - 1 for _, _, o in tails)
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.tensor([o[:-1] + [pad] * (width + 1 - len(o)) for _, _, o in tails])
        tail_mask = torch.tensor(
            [[1] * (len(o) - 1) + [0] * (width + 1 - len(o)) for *_, o in tails]
        )
        starts = torch.tensor([len(prompts[b]) for b, _, _ in tails])
        logits = self.model(
            input_ids=ids,
            attention_mask=torch.cat([mask[index], tail_mask], 1),
            position_ids=starts[:, None] + torch.arange(width),
            cache=cache,
        ).logits
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        for row, (b, k, option) in enumerate(tails):
            rest = logprobs[row, torch.arange(len(option) - 1), torch.tensor(option[1:])]
            scores[b][k] += rest.sum().item()
        return scores

    def _encode_prompts(self, prompts: list[list[int]]) -> tuple[Any, torch.Tensor, torch.Tensor]:
        """One pass over ``prompts``: the prefix they all share (the chat template's system
        turn) is encoded once and its KV cache reused, the rest right-padded into one batch.
        Returns the cache, its attention mask and each prompt's next-token log-probabilities
        (read at its own last token; only those positions reach the vocabulary projection)."""
        shared = min(len(p) for p in prompts) - 1
        for p in prompts[1:]:
            shared = next((i for i in range(shared) if p[i] != prompts[0][i]), shared)
        cache = None
        if shared > 0:
            cache = self.model(input_ids=torch.tensor([prompts[0][:shared]]), use_cache=True).cache
            cache.batch_repeat_interleave(len(prompts))
        rests = [p[shared:] for p in prompts]
        width = max(len(r) for r in rests)
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.tensor([r + [pad] * (width - len(r)) for r in rests])
        rest_mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rests])
        mask = torch.cat([torch.ones(len(rests), shared, dtype=rest_mask.dtype), rest_mask], 1)
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=torch.arange(shared, shared + width).expand(len(rests), -1),
            cache=cache,
            use_cache=True,
            logits_to_keep=torch.tensor([[len(r) - 1] for r in rests]),
        )
        return out.cache, mask, torch.log_softmax(out.logits[:, 0].float(), dim=-1)

    @torch.no_grad()
    def answer_nll(self, items: Sequence[EvalItem]) -> list[float]:
        """Mean negative log-likelihood per reference-answer token (the answer's own loss).

        Sequences are left-padded so every answer ends at the last position; only the logits of
        the answer positions are computed (``logits_to_keep``), not the whole vocabulary × prompt.
        """
        results = []
        pad = self.tokenizer.pad_token_id or 0
        for start in range(0, len(items), self.batch_size):
            batch = items[start : start + self.batch_size]
            prompts = [self._ids(self.prompt_text(i)) for i in batch]
            answers = [self._ids(i.reference + self.end) for i in batch]
            seqs = [p + a for p, a in zip(prompts, answers, strict=True)]
            width = max(len(s) for s in seqs)
            keep = max(len(a) for a in answers) + 1
            ids = torch.tensor([[pad] * (width - len(s)) + s for s in seqs])
            mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs])
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = self.model(
                input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep
            ).logits.float()
            for row, answer in enumerate(answers):
                n = len(answer)
                predicted = logits[row, keep - 1 - n : keep - 1]
                loss = torch.nn.functional.cross_entropy(predicted, torch.tensor(answer))
                results.append(loss.item())
        return results

    @torch.no_grad()
    def generate(self, items: Sequence[EvalItem], max_new_tokens: int) -> list[str]:
        """Greedy answers (deterministic), decoded without special tokens."""
        outputs = []
        side = self.tokenizer.padding_side
        self.tokenizer.padding_side = "left"
        try:
            for start in range(0, len(items), self.batch_size):
                batch = items[start : start + self.batch_size]
                enc = self.tokenizer(
                    [self.prompt_text(i) for i in batch],
                    return_tensors="pt",
                    padding=True,
                    add_special_tokens=False,
                )
                generated = self.model.generate(
                    **enc,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=self.tokenizer.pad_token_id,
                    eos_token_id=self.tokenizer.eos_token_id,
                )
                new = generated[:, enc["input_ids"].shape[1] :]
                outputs.extend(
                    t.strip() for t in self.tokenizer.batch_decode(new, skip_special_tokens=True)
                )
        finally:
            self.tokenizer.padding_side = side
        return outputs


def load_local_scorer(base: str, adapter_dir: Path) -> LocalScorer:
    """Base model in full precision with the adapter on top (PEFT, any method), ready to score.
    An adapter that brings new tokens is scored beside a separate, unchanged base model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lexlora.artifacts.adapter import read_adapter
    from lexlora.models import resolve_base_model

    method = read_adapter(adapter_dir).method  # a clear error for a folder that is not one
    path = resolve_base_model(base)
    model, tokenizer = load_adapted(path, adapter_dir)
    base_pair = None
    if has_new_tokens(method):
        base_pair = (
            AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval(),
            _with_pad(AutoTokenizer.from_pretrained(path)),
        )
    scorer = LocalScorer(model, _with_pad(tokenizer), base=base_pair)
    scorer.supports_scale = method == "lora"
    return scorer


def _with_pad(tokenizer: Any) -> Any:
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
