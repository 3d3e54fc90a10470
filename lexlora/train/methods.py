"""The PEFT config for the recipe's ``adapter.method``, and the new terms a new-token run adds.

- ``lora``: LoRA on ``lora.target_modules``;
- ``prompt_tuning``: ``adapter.prompt_tuning.num_virtual_tokens`` virtual tokens, initialised from
  the token embeddings of ``init_text``;
- ``new_tokens``: the terms added to the tokenizer, only their embedding rows trained (PEFT's
  trainable tokens), each initialised from the mean of its old sub-word rows;
- ``lora+new_tokens``: LoRA with those rows trainable too (``trainable_token_indices``).
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from peft import LoraConfig, PeftConfig, PromptTuningConfig, TrainableTokensConfig

from lexlora.adapter_methods import add_terms, subword_ids
from lexlora.artifacts.adapter import has_new_tokens
from lexlora.artifacts.pairs import Pair
from lexlora.errors import LexloraError
from lexlora.recipe import Recipe

QUOTED = re.compile(r'"([^"]{2,60})"')


def defined_terms(train_rows: list[Pair], n: int, tokenizer: Any) -> list[str]:
    """The ``n`` terms that the most training documents define (the ``definitions`` builder's
    questions quote them), leaving out those the base tokenizer already has as one token."""
    documents: dict[str, set[str]] = {}
    for row in train_rows:
        if row.meta.builder == "definitions" and row.messages:
            for term in QUOTED.findall(row.question):
                documents.setdefault(term.strip(), set()).add(row.meta.doc_id)
    counts = Counter({term: len(docs) for term, docs in documents.items()})
    chosen = []
    for term, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        if len(subword_ids(tokenizer, term)) > 1:
            chosen.append(term)
        if len(chosen) == n:
            break
    return chosen


def new_terms(recipe: Recipe, train_rows: list[Pair], tokenizer: Any) -> list[str]:
    """The terms a new-token run adds: ``adapter.new_tokens.terms``, or the defined terms."""
    cfg = recipe.adapter.new_tokens
    if cfg.terms:
        return list(cfg.terms)
    terms = defined_terms(train_rows, cfg.top_defined_terms, tokenizer)
    if not terms:
        raise LexloraError(
            "adapter.new_tokens.terms is empty and the training data has no defined terms "
            "(enable the definitions builder, or list the terms)"
        )
    return terms


def add_new_terms(recipe: Recipe, model: Any, tokenizer: Any, train_rows: list[Pair]) -> list[str]:
    """For a new-token method: add the run's terms to ``tokenizer`` and ``model`` (before any
    data is tokenised). Returns the terms (none for the other methods)."""
    if not has_new_tokens(recipe.adapter.method):
        return []
    terms = new_terms(recipe, train_rows, tokenizer)
    add_terms(model, tokenizer, terms)
    return terms


def peft_config(recipe: Recipe, base_path: str, token_ids: list[int]) -> PeftConfig:
    """The PEFT config of the recipe's method (``token_ids``: the new terms' ids)."""
    method, lora = recipe.adapter.method, recipe.lora
    if method == "prompt_tuning":
        cfg = recipe.adapter.prompt_tuning
        return PromptTuningConfig(
            task_type="CAUSAL_LM",
            num_virtual_tokens=cfg.num_virtual_tokens,
            prompt_tuning_init="TEXT",
            prompt_tuning_init_text=cfg.init_text,
            tokenizer_name_or_path=base_path,
        )
    if method == "new_tokens":
        return TrainableTokensConfig(token_indices=list(token_ids))
    targets = lora.target_modules
    return LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets if isinstance(targets, str) else list(targets),
        bias="none",
        task_type="CAUSAL_LM",
        trainable_token_indices=list(token_ids) if method == "lora+new_tokens" else None,
    )
