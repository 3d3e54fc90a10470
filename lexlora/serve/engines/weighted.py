"""A weighted sum of LoRA adapters written as one PEFT adapter folder (for engines that load
folders, such as vLLM).

``Σ wᵢ·ΔWᵢ`` with ``ΔWᵢ = sᵢ·Bᵢ·Aᵢ`` (``sᵢ`` = alpha/r, or alpha/√r with rsLoRA) is exactly the LoRA
of rank ``Σ rᵢ`` with ``A = [A₁; A₂; …]`` (rows stacked), ``B = [w₁s₁B₁, w₂s₂B₂, …]`` (columns
stacked) and scaling 1 (alpha = r): PEFT's ``add_weighted_adapter(..., combination_type="cat")``.
One part is a scaled adapter (its B times ``w·s``). A module that only some parts adapt gets zero
blocks for the others. The rank grows with every part, so it must stay within the server's
``max_lora_rank``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from lexlora.serve.engines.base import AdapterPart, EngineError

WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"


def _read(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    config_file, weights_file = path / CONFIG, path / WEIGHTS
    if not config_file.is_file() or not weights_file.is_file():
        raise EngineError(f"{path.name}: not a PEFT adapter folder ({CONFIG}, {WEIGHTS})")
    config = json.loads(config_file.read_text(encoding="utf-8"))
    if config.get("peft_type", "LORA") != "LORA" or config.get("use_dora"):
        raise EngineError("only plain LoRA adapters can be scaled or composed")
    if config.get("trainable_token_indices"):
        raise EngineError("adapters with new tokens cannot be scaled or composed (LoRA only)")
    if config.get("rank_pattern") or config.get("alpha_pattern") or config.get("modules_to_save"):
        raise EngineError("adapters with rank/alpha patterns or modules_to_save cannot be combined")
    if config.get("bias", "none") != "none":
        raise EngineError("adapters with trained biases cannot be combined")
    return config, load_file(str(weights_file))


def _modules(weights: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``prefix → (A, B)`` for every adapted module (``prefix.lora_A.weight`` …)."""
    found: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for key in weights:
        if key.endswith(".lora_A.weight"):
            prefix = key.removesuffix(".lora_A.weight")
            b = weights.get(f"{prefix}.lora_B.weight")
            if b is None:
                raise EngineError(f"adapter weights: {prefix} has lora_A but no lora_B")
            found[prefix] = (weights[key], b)
        elif not key.endswith(".lora_B.weight"):
            raise EngineError(f"adapter weights: unexpected tensor {key}")
    return found


def write_weighted_adapter(
    parts: Sequence[AdapterPart], out: Path, max_rank: int | None = None
) -> Path:
    """Write ``Σ weight·ΔW(part)`` to the folder ``out`` (created); return ``out``."""
    if not parts:
        raise EngineError("a weighted adapter needs at least one part")
    loaded = []
    for part in parts:
        config, weights = _read(Path(part.path))
        rank = int(config["r"])
        alpha = float(config.get("lora_alpha", rank))
        scaling = alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)
        loaded.append((config, _modules(weights), rank, scaling * part.weight))
    total = sum(rank for _, _, rank, _ in loaded)
    if max_rank is not None and total > max_rank:
        raise EngineError(
            f"the combined adapter has rank {total}, above the server's max_lora_rank ({max_rank})"
        )
    prefixes = sorted({p for _, modules, _, _ in loaded for p in modules})
    tensors: dict[str, torch.Tensor] = {}
    for prefix in prefixes:
        shapes = next(m[prefix] for _, m, _, _ in loaded if prefix in m)
        in_features, out_features = shapes[0].shape[1], shapes[1].shape[0]
        a_blocks, b_blocks = [], []
        for _, modules, rank, factor in loaded:
            if prefix in modules:
                a, b = modules[prefix]
                if a.shape[0] != rank or b.shape[1] != rank:
                    raise EngineError(f"adapter weights: {prefix} does not have rank {rank}")
                a_blocks.append(a.float())
                b_blocks.append(b.float() * factor)
            else:
                a_blocks.append(torch.zeros(rank, in_features))
                b_blocks.append(torch.zeros(out_features, rank))
        tensors[f"{prefix}.lora_A.weight"] = torch.cat(a_blocks, dim=0).contiguous()
        tensors[f"{prefix}.lora_B.weight"] = torch.cat(b_blocks, dim=1).contiguous()
    targets = {prefix.rsplit(".", 1)[-1] for prefix in prefixes}  # e.g. q_proj, v_proj
    config = {
        **loaded[0][0],
        "r": total,
        "lora_alpha": total,
        "use_rslora": False,
        "rank_pattern": {},
        "alpha_pattern": {},
        "target_modules": sorted(targets),
        "lora_dropout": 0.0,
        "inference_mode": True,
    }
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / WEIGHTS))
    (out / CONFIG).write_text(json.dumps(config, indent=2), encoding="utf-8")
    return out
