"""The maths of the adapter methods beyond LoRA, shared by training, evaluation and serving.

What each method is on disk (``adapter_config.json``, ``new_tokens.json``) is
:mod:`lexlora.artifacts.adapter`. Here: a new-token adapter's weights file holds only the new rows
(``save_embedding_layers=False``); the base model is extended again where it is loaded, by
:func:`add_terms`, whose initial rows are the mean of each term's sub-word embeddings in the base
vocabulary (input and, when untied, output embeddings); the trained input rows then replace them.
Prompt-tuned adapters bring their virtual tokens (:func:`prompt_embeddings`); :func:`load_adapted`
is the offline reference for any method.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from lexlora.artifacts.adapter import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    adapter_method,
    has_new_tokens,
    read_new_tokens,
)
from lexlora.errors import LexloraError

# --- new tokens ----------------------------------------------------------------------------


def subword_ids(base_tokenizer: Any, term: str) -> list[int]:
    """The base vocabulary's ids for ``term`` (what its new row is initialised from)."""
    ids = list(base_tokenizer(term, add_special_tokens=False)["input_ids"])
    if not ids:
        raise LexloraError(f"new token {term!r}: the base tokenizer gives it no sub-words")
    return ids


def mean_rows(weight: torch.Tensor, base_tokenizer: Any, terms: list[str]) -> torch.Tensor:
    """``[len(terms), hidden]``: each term's mean sub-word row of ``weight``."""
    return torch.stack([weight[subword_ids(base_tokenizer, t)].mean(0) for t in terms])


def add_terms(model: Any, tokenizer: Any, terms: list[str]) -> list[int]:
    """Add ``terms`` to ``tokenizer`` (in place) and grow ``model``'s embeddings to match, each new
    row the mean of the term's sub-word rows, in the input embeddings and the output head. A base
    that ties the two is untied first (the head becomes a copy): only the input rows are trained
    (TRL computes the loss from ``lm_head.weight`` itself and refuses an adapter on it), and every
    loader gets the same untrained output rows. Returns the new ids, in the order of ``terms``."""
    base_ids = {t: subword_ids(tokenizer, t) for t in terms}  # before the terms exist
    known = [t for t in terms if t in tokenizer.get_vocab()]
    if known:
        raise LexloraError(f"new token {known[0]!r} is already a token of the base vocabulary")
    tokenizer.add_tokens(list(terms))
    ids = [tokenizer.convert_tokens_to_ids(t) for t in terms]
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    with torch.no_grad():
        tables = [model.get_input_embeddings().weight]
        head = model.get_output_embeddings()
        if head is not None and head.weight is not tables[0]:
            tables.append(head.weight)
        for table in tables:
            for term, new_id in zip(terms, ids, strict=True):
                table[new_id] = table[base_ids[term]].mean(0)
        if head is not None and head.weight is tables[0]:
            head.weight = torch.nn.Parameter(tables[0].detach().clone(), requires_grad=False)
            model.config.tie_word_embeddings = False
            model.config.get_text_config().tie_word_embeddings = False
    return ids


def trained_token_rows(folder: Path) -> torch.Tensor:
    """The trained input rows ``[k, hidden]`` of a new-token adapter, in token-id order."""
    tensors = load_file(str(Path(folder) / WEIGHTS_FILE))
    rows = [v for k, v in tensors.items() if "trainable_tokens_delta" in k and "lm_head" not in k]
    if len(rows) != 1:
        raise LexloraError(f"{folder}/{WEIGHTS_FILE}: expected one trainable-tokens tensor")
    return rows[0]


@contextmanager
def lora_part(folder: Path) -> Iterator[Path]:
    """A temporary PEFT folder with only the LoRA part of a ``lora+new_tokens`` adapter (its
    config without ``trainable_token_indices``, its weights without the new rows): what an
    engine that holds the new rows itself loads into PEFT."""
    folder = Path(folder)
    config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    config["trainable_token_indices"] = None
    tensors = load_file(str(folder / WEIGHTS_FILE))
    with tempfile.TemporaryDirectory(prefix="lexlora-lora-part-") as tmp:
        (Path(tmp) / CONFIG_FILE).write_text(json.dumps(config))
        lora = {k: v for k, v in tensors.items() if "trainable_tokens" not in k}
        save_file(lora, str(Path(tmp) / WEIGHTS_FILE))
        yield Path(tmp)


def prompt_embeddings(folder: Path) -> torch.Tensor:
    """The virtual tokens ``[n, hidden]`` of a prompt-tuned adapter."""
    tensors = load_file(str(Path(folder) / WEIGHTS_FILE))
    if "prompt_embeddings" not in tensors:
        raise LexloraError(f"{folder}/{WEIGHTS_FILE}: no prompt_embeddings tensor")
    return tensors["prompt_embeddings"]


def load_adapted(base_path: str, folder: Path, dtype: torch.dtype = torch.float32) -> tuple:
    """(PEFT model, tokenizer) for the adapter in ``folder`` of any method, as PEFT loads it
    offline: for new tokens the base is first extended by :func:`add_terms` with the folder's
    terms. The reference every engine's output is held to."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_path)
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype)
    if has_new_tokens(adapter_method(folder)):
        terms = read_new_tokens(folder)["terms"]
        add_terms(model, tokenizer, terms)
    model = PeftModel.from_pretrained(model, str(folder), is_trainable=False)
    model.eval()
    return model, tokenizer
