"""Training data: ``data/RECIPE/*.jsonl`` (chat ``messages``) → TRL prompt/completion rows.

Every pair becomes ``{"prompt": [system, user], "completion": [assistant]}``. TRL applies the base
model's chat template and computes the loss on the completion tokens only, for any base model (no
``{% generation %}`` markers needed in its template).
"""

from __future__ import annotations

from pathlib import Path

from datasets import Dataset

from lexlora.data.build import build_dataset, dataset_dir
from lexlora.data.manifest import dataset_problem
from lexlora.errors import LexloraError
from lexlora.io import read_jsonl
from lexlora.recipe import Recipe


def ensure_dataset(recipe: Recipe, log=print) -> Path:
    """The recipe's data folder, (re)built first when missing, built from another data recipe,
    or not matching the file hashes of its manifest."""
    folder = dataset_dir(recipe)
    problem = dataset_problem(folder, recipe.data_hash())
    if problem is not None:
        log(f"data: {problem}; building it")
        build_dataset(recipe)
    return folder


def to_prompt_completion(row: dict) -> dict:
    messages = row["messages"]
    if not messages or messages[-1]["role"] != "assistant":
        raise LexloraError("data: every pair must end with an assistant message")
    return {"prompt": messages[:-1], "completion": messages[-1:]}


def load_split(folder: Path, split: str, limit: int | None = None, seed: int = 0) -> Dataset:
    """One split as a prompt/completion dataset; ``limit`` keeps a seeded subset."""
    path = folder / f"{split}.jsonl"
    if not path.is_file() or path.stat().st_size == 0:
        raise LexloraError(f"{path}: no {split} pairs; rebuild with `lexlora data`")
    # Only the messages are read: the provenance ``meta`` has optional fields whose type pyarrow
    # would infer from the first rows (null) and then fail on (a string further down).
    data = Dataset.from_list([to_prompt_completion(row) for row in read_jsonl(path)])
    if limit is not None and len(data) > limit:
        data = data.shuffle(seed=seed).select(range(limit))
    return data
