"""Training data: ``data/RECIPE/*.jsonl`` rows (:class:`~lexlora.artifacts.pairs.Pair`) → token ids
and labels for TRL's SFTTrainer, chat pairs and plain-text rows in one dataset.

- a chat pair is rendered by the base model's chat template; its labels are the assistant answer
  (the tokens after the prompt with the generation prompt, as TRL's prompt/completion rows);
- a ``text`` row (reading comprehension) is tokenised as plain text plus EOS, with no chat
  template; every token is a label (continued pretraining).

The rows reach SFTTrainer pre-tokenised (``input_ids`` and ``labels``, -100 where no loss), a form
TRL trains as given, packing included, for any base model (no ``{% generation %}`` markers
needed in its template) and whatever ``completion_only_loss`` says.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from datasets import Dataset
from pydantic import ValidationError
from transformers import PreTrainedTokenizerBase
from trl.data_utils import common_prefix_length

from lexlora.artifacts.manifest import dataset_problem
from lexlora.artifacts.pairs import Pair
from lexlora.data.build import build_dataset
from lexlora.errors import LexloraError
from lexlora.io import read_jsonl
from lexlora.progress import Log
from lexlora.recipe import Recipe

IGNORE = -100  # the label of a token without loss


def ensure_dataset(recipe: Recipe, log: Log = print) -> Path:
    """The recipe's data folder, (re)built first when missing, built from another data recipe,
    or not matching the file hashes of its manifest."""
    folder = recipe.dataset_dir
    problem = dataset_problem(folder, recipe.data_hash())
    if problem is not None:
        log(f"data: {problem}; building it")
        build_dataset(recipe)
    return folder


def read_pairs(folder: Path, split: str) -> list[Pair]:
    """The rows of one split; a missing or empty split, or a malformed row, is a LexloraError."""
    path = folder / f"{split}.jsonl"
    if not path.is_file() or path.stat().st_size == 0:
        raise LexloraError(f"{path}: no {split} pairs; rebuild with `lexlora data`")
    rows = []
    for n, row in enumerate(read_jsonl(path), 1):
        try:
            rows.append(Pair.model_validate(row))
        except ValidationError as exc:
            error = exc.errors()[0]
            raise LexloraError(
                f"{path}:{n}: not a training row ({error['msg']}); rebuild with `lexlora data`"
            ) from None
    return rows


def to_prompt_completion(row: dict) -> dict:
    messages = row.get("messages")
    if not messages or messages[-1]["role"] != "assistant":
        raise LexloraError("data: every pair must end with an assistant message")
    return {"prompt": messages[:-1], "completion": messages[-1:]}


def load_split(folder: Path, split: str, limit: int | None = None, seed: int = 0) -> Dataset:
    """One split's chat pairs as TRL prompt/completion rows (for TRL's own tokenisation and for
    inspection); ``limit`` keeps a seeded subset. Training uses :func:`tokenized_dataset`, which
    also takes plain-text rows."""
    rows = read_pairs(folder, split)
    if any(p.is_text for p in rows):
        raise LexloraError(
            f"{folder / split}.jsonl: has plain-text rows, which have no prompt/completion form; "
            "use tokenized_dataset"
        )
    # Only the messages are kept: the provenance ``meta`` has optional fields whose type pyarrow
    # would infer from the first rows (null) and then fail on (a string further down).
    data = Dataset.from_list([to_prompt_completion(p.model_dump()) for p in rows])
    return _subset(data, limit, seed)


def tokenize_pair(pair: Pair, tokenizer: PreTrainedTokenizerBase) -> dict[str, list[int]]:
    """``input_ids`` and ``labels`` of one row: the answer of a chat pair, all of a text row."""
    if pair.text is not None:
        ids = list(tokenizer(pair.text)["input_ids"])
        if tokenizer.eos_token_id is not None and ids[-1:] != [tokenizer.eos_token_id]:
            ids.append(tokenizer.eos_token_id)
        return {"input_ids": ids, "labels": ids}
    row = to_prompt_completion(pair.model_dump())
    # As TRL tokenises a conversational prompt/completion row: the completion starts where the
    # prompt (with the generation prompt) and the whole conversation diverge.
    prompt = _chat_ids(tokenizer, row["prompt"], add_generation_prompt=True)
    ids = _chat_ids(tokenizer, row["prompt"] + row["completion"])
    start = common_prefix_length(prompt, ids)
    return {"input_ids": ids, "labels": [IGNORE] * start + ids[start:]}


def tokenized_dataset(
    pairs: Iterable[Pair],
    tokenizer: PreTrainedTokenizerBase,
    limit: int | None = None,
    seed: int = 0,
) -> Dataset:
    """Rows as a pre-tokenised SFTTrainer dataset (``input_ids``, ``labels``); ``limit`` keeps a
    seeded subset."""
    return _subset(Dataset.from_list([tokenize_pair(p, tokenizer) for p in pairs]), limit, seed)


def _chat_ids(tokenizer: PreTrainedTokenizerBase, messages: list[dict], **kwargs) -> list[int]:
    return list(
        tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs)[
            "input_ids"
        ]
    )


def _subset(data: Dataset, limit: int | None, seed: int) -> Dataset:
    if limit is not None and len(data) > limit:
        data = data.shuffle(seed=seed).select(range(limit))
    return data
