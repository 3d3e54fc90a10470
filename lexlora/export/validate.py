"""Checks an adapter must pass before anything serves it — the one place they live.

The silent failures caught here: weights or probe outputs that are NaN/Inf (served, they give empty
text or HTTP 500), an unreadable or truncated weights file, an ``adapter_config.json`` that is not
JSON or whose fields PEFT would choke on, a rank that disagrees with the weights' shapes, weights
that match no module (it would quietly serve the base model), a rank above the server's limit
(vLLM answers HTTP 500), and LoRA on embeddings, ``lm_head`` or ``modules_to_save`` (vLLM rejects
them). :func:`read_adapter` is what export, the registry's publish and the server's load all call.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, FiniteFloat, PositiveInt, ValidationError
from safetensors import SafetensorError, safe_open

from lexlora.adapter_methods import METHODS, Method, method_of_config, read_new_tokens
from lexlora.errors import LexloraError

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
FORBIDDEN_KEYS = ("embed_tokens", "lm_head", "lora_embedding", "modules_to_save")
PROBE_PROMPT = "Does this licence allow commercial use of the software?"


class PromptTuningFields(BaseModel):
    """The fields of a prompt-tuning ``adapter_config.json`` that serving relies on."""

    model_config = ConfigDict(extra="allow", strict=True)

    peft_type: Literal["PROMPT_TUNING"]
    num_virtual_tokens: PositiveInt
    token_dim: PositiveInt


class TrainableTokensFields(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    peft_type: Literal["TRAINABLE_TOKENS"]
    token_indices: list[int]


class LoraConfigFields(BaseModel):
    """The fields of ``adapter_config.json`` that lexlora and PEFT rely on (others pass)."""

    model_config = ConfigDict(extra="allow", strict=True)

    peft_type: Literal["LORA"] = "LORA"
    r: PositiveInt
    trainable_token_indices: list[int] | dict[str, list[int]] | None = None
    lora_alpha: FiniteFloat | None = None
    target_modules: list[str] | str | None = None
    rank_pattern: dict[str, PositiveInt] = {}
    alpha_pattern: dict[str, FiniteFloat] = {}
    modules_to_save: list[str] | None = None


@dataclass(frozen=True)
class AdapterFiles:
    folder: Path
    config: dict[str, Any]
    keys: tuple[str, ...]

    @property
    def method(self) -> Method:
        return method_of_config(self.config)

    @property
    def rank(self) -> int:
        """The LoRA rank (0 for a method without LoRA)."""
        if self.config.get("peft_type", "LORA") != "LORA":
            return 0
        pattern = self.config.get("rank_pattern") or {}
        return max([int(self.config.get("r", 0)), *(int(v) for v in pattern.values())])

    @property
    def target_modules(self) -> list[str]:
        targets = self.config.get("target_modules") or []
        return sorted(targets) if isinstance(targets, list) else [str(targets)]


def read_adapter(folder: Path) -> AdapterFiles:
    """A PEFT adapter folder (any of :data:`METHODS`) whose config is valid, whose weights are
    readable and finite and agree with the config (LoRA ranks; a new-token adapter's
    ``new_tokens.json`` and rows); anything else is a one-line LexloraError."""
    config_path, weights = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    if not config_path.is_file() or not weights.is_file():
        raise LexloraError(
            f"{folder}: not a PEFT adapter (expected {CONFIG_FILE} and {WEIGHTS_FILE})"
        )
    config = read_config(config_path)
    shapes = read_finite_weights(weights)
    method = method_of_config(config)
    if method in ("lora", "lora+new_tokens"):
        check_ranks(config, shapes, config_path, weights)
    if method in ("new_tokens", "lora+new_tokens"):
        check_new_tokens(folder, shapes)
    return AdapterFiles(folder, config, tuple(shapes))


def check_new_tokens(folder: Path, shapes: dict[str, tuple[int, ...]]) -> None:
    """``new_tokens.json`` names as many terms as the weights hold new rows, and a tokenizer."""
    record = read_new_tokens(folder)
    rows = [s for k, s in shapes.items() if "trainable_tokens_delta" in k and "lm_head" not in k]
    if len(rows) != 1 or rows[0][0] != len(record["terms"]):
        raise LexloraError(
            f"{folder}: {WEIGHTS_FILE} must hold one row per term of new_tokens.json "
            f"({len(record['terms'])}); it holds {[list(r) for r in rows]}"
        )
    if not (folder / "tokenizer_config.json").is_file():
        raise LexloraError(f"{folder}: a new-token adapter must bring its tokenizer files")


def read_config(path: Path) -> dict[str, Any]:
    """``adapter_config.json`` as a dict, its LoRA fields validated."""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LexloraError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise LexloraError(f"{path}: expected a JSON object, got {type(config).__name__}")
    fields = {
        "LORA": LoraConfigFields,
        "PROMPT_TUNING": PromptTuningFields,
        "TRAINABLE_TOKENS": TrainableTokensFields,
    }.get(config.get("peft_type", "LORA"))
    if fields is None:
        raise LexloraError(
            f"{path}: peft_type {config.get('peft_type')!r}, expected one of LORA, "
            f"PROMPT_TUNING, TRAINABLE_TOKENS (methods: {', '.join(METHODS)})"
        )
    try:
        fields.model_validate(config)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        got = repr(err["input"])
        got = got if len(got) <= 60 else got[:57] + "..."
        raise LexloraError(f"{path}: field {field!r}: {err['msg'].lower()} (got {got})") from None
    return config


def read_finite_weights(path: Path) -> dict[str, tuple[int, ...]]:
    """Every tensor's name and shape; an unreadable file or a NaN/Inf value is an error."""
    shapes: dict[str, tuple[int, ...]] = {}
    try:
        with safe_open(str(path), framework="pt") as f:
            names = f.keys()  # a safe_open handle is not iterable
            for key in names:
                tensor = f.get_tensor(key)
                check_finite(tensor, f"{path}: tensor {key}")
                shapes[key] = tuple(tensor.shape)
    except SafetensorError as exc:
        raise LexloraError(f"{path}: not a readable safetensors file ({exc})") from None
    if not shapes:
        raise LexloraError(f"{path}: holds no tensors")
    return shapes


def check_finite(tensor: torch.Tensor, what: str) -> None:
    """A LexloraError naming ``what`` unless every value of ``tensor`` is finite."""
    if not tensor.is_floating_point() or bool(torch.isfinite(tensor).all()):
        return
    kind = "NaN" if bool(torch.isnan(tensor).any()) else "infinite"
    raise LexloraError(
        f"{what} has {kind} values; the adapter is unusable (retrain, e.g. with a lower "
        "learning rate)"
    )


def check_ranks(config: dict, shapes: dict, config_path: Path, weights: Path) -> None:
    """Each ``lora_A`` (rows) and ``lora_B`` (columns) has a rank the config declares."""
    declared = {config["r"], *config.get("rank_pattern", {}).values()}
    for key, shape in shapes.items():
        axis = 0 if ".lora_A." in key else 1 if ".lora_B." in key else None
        if axis is None:
            continue
        rank = shape[axis] if len(shape) >= 2 else None
        if rank not in declared:
            raise LexloraError(
                f"{weights}: tensor {key} has shape {list(shape)}, not rank "
                f"{' or '.join(map(str, sorted(declared)))} as {config_path.name} declares (r)"
            )


def check_serving_limits(adapter: AdapterFiles, max_rank: int) -> None:
    """Rank within the server's limit; no embedding/lm_head/modules_to_save weights (LoRA, which
    vLLM serves; the other methods are the embedded engine's, which has no such limits)."""
    if adapter.method != "lora":
        return
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
