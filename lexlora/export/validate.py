"""The checks ``lexlora export`` makes with the base model loaded, beyond reading the folder
(:func:`lexlora.artifacts.adapter.read_adapter`): every target module exists in the base (else the
adapter would quietly serve the base model), and the adapter changes the base's output on a probe
prompt, with finite logits.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from lexlora.artifacts.adapter import AdapterFolder, check_finite
from lexlora.errors import LexloraError

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PROBE_PROMPT = "Does this licence allow commercial use of the software?"


def check_targets_exist(adapter: AdapterFolder, model: torch.nn.Module) -> None:
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in adapter.target_modules if t not in names]
    if missing:
        raise LexloraError(
            f"{adapter.folder}: target module '{missing[0]}' does not exist in the base model"
        )


def probe_logits(model: Any, tokenizer: Any, prompt: str = PROBE_PROMPT) -> torch.Tensor:
    """Logits of the probe prompt (chat-formatted when the tokenizer has a template)."""
    if tokenizer.chat_template:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
    else:
        text = prompt
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        return model(**ids.to(model.device)).logits.float().cpu()


def check_changes_output(base_logits: torch.Tensor, adapted_logits: torch.Tensor, folder) -> float:
    """The adapter must give finite probe logits that differ from the base's; returns the largest
    change. Written so that a NaN fails (every comparison with NaN is False)."""
    check_finite(base_logits, "the base model's output on the probe prompt")
    check_finite(adapted_logits, f"{folder}: the adapted model's output on the probe prompt")
    change = (adapted_logits - base_logits).abs().max().item()
    if not (math.isfinite(change) and change >= 1e-6):
        raise LexloraError(
            f"{folder}: the adapter does not change the base model's output on a probe prompt "
            "(its weights match no module of this base, or are all zero)"
        )
    return change
