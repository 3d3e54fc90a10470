"""Checks an adapter must pass before anything serves it.

The silent failures caught here: an adapter whose weights match no module (it would quietly serve
the base model), a rank above the server's limit (vLLM answers HTTP 500), and LoRA on embeddings,
``lm_head`` or ``modules_to_save`` (vLLM rejects them).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from lexlora.errors import LexloraError

FORBIDDEN_KEYS = ("embed_tokens", "lm_head", "lora_embedding", "modules_to_save")
PROBE_PROMPT = "Does this licence allow commercial use of the software?"


@dataclass(frozen=True)
class AdapterFiles:
    folder: Path
    config: dict[str, Any]
    keys: tuple[str, ...]

    @property
    def rank(self) -> int:
        pattern = self.config.get("rank_pattern") or {}
        return max([int(self.config.get("r", 0)), *(int(v) for v in pattern.values())])

    @property
    def target_modules(self) -> list[str]:
        targets = self.config.get("target_modules") or []
        return sorted(targets) if isinstance(targets, list) else [str(targets)]


def read_adapter(folder: Path) -> AdapterFiles:
    """The adapter's config and tensor names; anything but a PEFT LoRA folder is an error."""
    config_path = folder / "adapter_config.json"
    weights = folder / "adapter_model.safetensors"
    if not config_path.is_file() or not weights.is_file():
        raise LexloraError(
            f"{folder}: not a LoRA adapter (expected adapter_config.json and "
            "adapter_model.safetensors)"
        )
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if config.get("peft_type", "LORA") != "LORA":
        raise LexloraError(f"{config_path}: peft_type {config.get('peft_type')!r}, expected LORA")
    with safe_open(str(weights), framework="pt") as f:
        keys = tuple(f.keys())
    return AdapterFiles(folder, config, keys)


def check_serving_limits(adapter: AdapterFiles, max_rank: int) -> None:
    """Rank within the server's limit; no embedding/lm_head/modules_to_save weights."""
    if adapter.rank > max_rank:
        raise LexloraError(
            f"{adapter.folder}: LoRA rank {adapter.rank} exceeds export.max_lora_rank={max_rank} "
            "(the server's --max-lora-rank); retrain with a smaller lora.rank or raise the limit"
        )
    if adapter.config.get("modules_to_save"):
        raise LexloraError(
            f"{adapter.folder}: modules_to_save {adapter.config['modules_to_save']} cannot be "
            "served as a LoRA adapter (vLLM rejects them)"
        )
    bad = [k for k in adapter.keys if any(part in k for part in FORBIDDEN_KEYS)]
    if bad:
        raise LexloraError(
            f"{adapter.folder}: weights on embeddings or lm_head ({bad[0]}) cannot be served as a "
            "LoRA adapter (vLLM rejects them)"
        )


def check_targets_exist(adapter: AdapterFiles, model: torch.nn.Module) -> None:
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in adapter.target_modules if t not in names]
    if missing:
        raise LexloraError(
            f"{adapter.folder}: target module '{missing[0]}' does not exist in the base model"
        )


def probe_logits(model: Any, tokenizer: Any) -> torch.Tensor:
    """Logits of the probe prompt (chat-formatted when the tokenizer has a template)."""
    if tokenizer.chat_template:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": PROBE_PROMPT}], tokenize=False, add_generation_prompt=True
        )
    else:
        text = PROBE_PROMPT
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        return model(**ids.to(model.device)).logits.float().cpu()


def check_changes_output(base_logits: torch.Tensor, adapted_logits: torch.Tensor, folder) -> float:
    """The adapter must move the probe logits; returns the largest change."""
    change = (adapted_logits - base_logits).abs().max().item()
    if change < 1e-6:
        raise LexloraError(
            f"{folder}: the adapter does not change the base model's output on a probe prompt "
            "(its weights match no module of this base, or are all zero)"
        )
    return change
