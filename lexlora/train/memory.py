"""Check ``train.max_length`` against the base model before anything is loaded.

Two limits, read from the base's ``config.json`` alone (no weights):

- the context: ``max_position_embeddings`` of the base;
- memory, a deliberate lower bound: the layer inputs a backward pass keeps, batch × max_length ×
  hidden × layers × bytes per value (what gradient checkpointing keeps; without it a run needs
  several times more), plus the float32 logits, batch × max_length × vocabulary × 4 bytes. It is
  compared with the memory available now (CUDA free memory on a GPU, else the RAM psutil reports
  as available), so a run refused here could never have fit.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from transformers import AutoConfig

from lexlora.errors import LexloraError
from lexlora.models import resolve_base_model
from lexlora.recipe import Recipe
from lexlora.train.model_setup import load_error, model_dtype


def check_max_length(recipe: Recipe, cuda: bool) -> None:
    """A one-line error naming ``train.max_length`` when the base or the memory cannot hold it."""
    config = base_config(recipe)
    bytes_per_value = model_dtype(recipe.model.dtype, cuda).itemsize
    t = recipe.train
    context = getattr(config, "max_position_embeddings", None)
    if context and t.max_length > context:
        raise LexloraError(
            f"train.max_length={t.max_length} is longer than the context of model.base "
            f"'{recipe.model.base}' (max_position_embeddings {context}); use at most {context}"
        )
    needed = training_memory_bytes(config, t.batch_size, t.max_length, bytes_per_value)
    available, where = available_memory(cuda)
    if needed is not None and needed > available:
        raise LexloraError(
            f"train.max_length={t.max_length} with train.batch_size={t.batch_size} needs at least "
            f"{needed / 2**30:,.1f} GiB for activations and logits, more than the "
            f"{available / 2**30:,.1f} GiB of {where} available; lower train.max_length or "
            "train.batch_size"
        )


def base_config(recipe: Recipe) -> Any:
    """The base model's (text) configuration, read from ``config.json`` without any weights."""
    path = resolve_base_model(recipe.model.base)
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise load_error(recipe, exc) from None
    return config.get_text_config()


def training_memory_bytes(
    config: Any, batch_size: int, max_length: int, bytes_per_value: int
) -> int | None:
    """The lower bound of the module docstring; None when the config lacks a size."""
    sizes = [getattr(config, k, None) for k in ("hidden_size", "num_hidden_layers", "vocab_size")]
    if not all(isinstance(size, int) and size > 0 for size in sizes):
        return None
    hidden, layers, vocab = sizes
    tokens = batch_size * max_length
    return tokens * hidden * layers * bytes_per_value + tokens * vocab * 4


def available_memory(cuda: bool) -> tuple[int, str]:
    """Bytes free for training now, and where (``CUDA memory`` or ``RAM``)."""
    if cuda:
        return torch.cuda.mem_get_info()[0], "CUDA memory"
    try:
        import psutil  # installed with accelerate
    except ImportError:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "RAM"
    return psutil.virtual_memory().available, "RAM"
