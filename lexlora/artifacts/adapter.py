"""A PEFT adapter folder, the one place it is understood: which method it holds, whether its
config and weights are valid, its LoRA rank and scaling, what a server can serve, the base it
belongs to, and the LoRA maths of a weighted sum of adapters.

Methods (``adapter_config.json``'s ``peft_type``):

- ``lora``: PEFT LoRA (``LORA``).
- ``prompt_tuning``: PEFT prompt tuning (``PROMPT_TUNING``): ``prompt_embeddings`` ``[n, hidden]``,
  prepended to every prompt's token embeddings at positions ``0..n-1``.
- ``new_tokens``: PEFT trainable tokens (``TRAINABLE_TOKENS``) on terms added to the tokenizer.
- ``lora+new_tokens``: LoRA with ``trainable_token_indices``: both at once.

A new-token adapter folder also holds its tokenizer (the base's plus the terms) and
``new_tokens.json`` (``{"terms", "token_ids", "base_vocab_size"}``).

The silent failures :func:`read_adapter` catches: weights that are NaN/Inf (served, they give empty
text or HTTP 500), an unreadable or truncated weights file, an ``adapter_config.json`` that is not
JSON or whose fields PEFT would choke on, a rank that disagrees with the weights' shapes. What a
LoRA server cannot serve (a rank above its limit, LoRA on embeddings, ``lm_head`` or
``modules_to_save``) is :meth:`AdapterFolder.check_serving_limits`. Export, the registry's publish,
evaluation and the servers all read adapters here.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, FiniteFloat, PositiveInt, ValidationError
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from lexlora.errors import LexloraError
from lexlora.io import dumps_canonical, sha256_text

Method = Literal["lora", "prompt_tuning", "new_tokens", "lora+new_tokens"]
METHODS: tuple[Method, ...] = ("lora", "prompt_tuning", "new_tokens", "lora+new_tokens")
NEW_TOKENS_FILE = "new_tokens.json"
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"

ENGINES: dict[Method, tuple[str, ...]] = {  # which engines can serve each method
    "lora": ("embedded", "vllm"),
    "prompt_tuning": ("embedded",),
    "new_tokens": ("embedded",),
    "lora+new_tokens": ("embedded",),
}


def has_new_tokens(method: str) -> bool:
    return method in ("new_tokens", "lora+new_tokens")


def has_lora(method: str) -> bool:
    return method in ("lora", "lora+new_tokens")


def method_of_config(config: dict[str, Any]) -> Method:
    """The method an ``adapter_config.json`` (as a dict) describes."""
    peft_type = config.get("peft_type", "LORA")
    if peft_type == "LORA":
        return "lora+new_tokens" if config.get("trainable_token_indices") else "lora"
    if peft_type == "PROMPT_TUNING":
        return "prompt_tuning"
    if peft_type == "TRAINABLE_TOKENS":
        return "new_tokens"
    raise LexloraError(
        f"{CONFIG_FILE}: peft_type {peft_type!r} is not one lexlora serves "
        "(LORA, PROMPT_TUNING, TRAINABLE_TOKENS)"
    )


def adapter_method(folder: Path) -> Method:
    """The method of the adapter in ``folder`` (its config read by :func:`read_config`)."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise LexloraError(f"{path}: cannot read the adapter config (no such file)")
    return method_of_config(read_config(path))  # read_config names the file in its errors


def check_engine(method: str, engine: str, adapter: str) -> None:
    """Raise a one-line error when ``engine`` cannot serve ``method``."""
    engines = ENGINES.get(method, ())  # type: ignore[call-overload]
    if engine not in engines:
        raise LexloraError(
            f"adapter '{adapter}' is a {method} adapter, which engine '{engine}' cannot serve "
            f"(it serves {', '.join(m for m, e in ENGINES.items() if engine in e) or 'none'}); "
            f"use engine: {' or '.join(engines)}"
        )


def write_new_tokens(folder: Path, terms: list[str], ids: list[int], base_vocab: int) -> None:
    record = {"terms": list(terms), "token_ids": list(ids), "base_vocab_size": base_vocab}
    (Path(folder) / NEW_TOKENS_FILE).write_text(json.dumps(record, indent=2) + "\n")


def read_new_tokens(folder: Path) -> dict[str, Any]:
    """``new_tokens.json`` of a new-token adapter: terms, token ids, base vocabulary size."""
    path = Path(folder) / NEW_TOKENS_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        terms, ids, vocab = record["terms"], record["token_ids"], record["base_vocab_size"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LexloraError(f"{path}: missing or unreadable ({exc!r})") from None
    if len(terms) != len(ids) or ids != list(range(vocab, vocab + len(ids))):
        raise LexloraError(f"{path}: token_ids must be base_vocab_size.. in the order of terms")
    return record


FORBIDDEN_KEYS = ("embed_tokens", "lm_head", "lora_embedding", "modules_to_save")


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
class AdapterFolder:
    folder: Path
    config: dict[str, Any]
    keys: tuple[str, ...]

    @property
    def method(self) -> Method:
        return method_of_config(self.config)

    @property
    def rank(self) -> int:
        """The LoRA rank (0 for a method without LoRA)."""
        return lora_rank(self.config)

    @property
    def target_modules(self) -> list[str]:
        targets = self.config.get("target_modules") or []
        return sorted(targets) if isinstance(targets, list) else [str(targets)]


def lora_rank(config: dict[str, Any]) -> int:
    """The largest LoRA rank a config declares (``r`` and ``rank_pattern``; 0 without LoRA)."""
    if config.get("peft_type", "LORA") != "LORA":
        return 0
    pattern = config.get("rank_pattern") or {}
    return max([int(config.get("r", 0)), *(int(v) for v in pattern.values())])


def read_adapter(folder: Path) -> AdapterFolder:
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
    return AdapterFolder(folder, config, tuple(shapes))


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


def check_serving_limits(adapter: AdapterFolder, max_rank: int) -> None:
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


def base_config_hash(model_path: str) -> str:
    """sha256 of the base model's architecture config (what an adapter must match)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path).to_dict()
    for key in ("transformers_version", "_name_or_path", "dtype", "torch_dtype"):
        config.pop(key, None)
    return sha256_text(dumps_canonical(config))


# --- LoRA maths: strength and weighted sums --------------------------------------------------


def lora_scaling(config: dict[str, Any]) -> float:
    """A LoRA's ``scaling`` (ΔW = scaling·B·A): alpha/r, or alpha/√r with rsLoRA."""
    rank = int(config["r"])
    alpha = float(config.get("lora_alpha", rank))
    return alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)


def _composable(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """The config and weights of a plain LoRA folder that can be scaled or composed."""
    config_file, weights_file = path / CONFIG_FILE, path / WEIGHTS_FILE
    if not config_file.is_file() or not weights_file.is_file():
        raise LexloraError(
            f"{path.name}: not a PEFT adapter folder ({CONFIG_FILE}, {WEIGHTS_FILE})"
        )
    config = read_config(config_file)
    if config.get("peft_type", "LORA") != "LORA" or config.get("use_dora"):
        raise LexloraError("only plain LoRA adapters can be scaled or composed")
    if config.get("trainable_token_indices"):
        raise LexloraError("adapters with new tokens cannot be scaled or composed (LoRA only)")
    if config.get("rank_pattern") or config.get("alpha_pattern") or config.get("modules_to_save"):
        raise LexloraError(
            "adapters with rank/alpha patterns or modules_to_save cannot be combined"
        )
    if config.get("bias", "none") != "none":
        raise LexloraError("adapters with trained biases cannot be combined")
    return config, load_file(str(weights_file))


def _modules(weights: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``prefix → (A, B)`` for every adapted module (``prefix.lora_A.weight`` …)."""
    found: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for key in weights:
        if key.endswith(".lora_A.weight"):
            prefix = key.removesuffix(".lora_A.weight")
            b = weights.get(f"{prefix}.lora_B.weight")
            if b is None:
                raise LexloraError(f"adapter weights: {prefix} has lora_A but no lora_B")
            found[prefix] = (weights[key], b)
        elif not key.endswith(".lora_B.weight"):
            raise LexloraError(f"adapter weights: unexpected tensor {key}")
    return found


def compose_lora(
    parts: Sequence[tuple[Path, float]], out: Path, max_rank: int | None = None
) -> Path:
    """Write ``Σ weight·ΔW(folder)`` over ``parts`` (folder, weight) as one LoRA folder ``out``
    (created); return ``out``.

    ``Σ wᵢ·ΔWᵢ`` with ``ΔWᵢ = sᵢ·Bᵢ·Aᵢ`` (:func:`lora_scaling`) is exactly the LoRA of rank ``Σ rᵢ``
    with ``A = [A₁; A₂; …]`` (rows stacked), ``B = [w₁s₁B₁, w₂s₂B₂, …]`` (columns stacked) and
    scaling 1 (alpha = r): PEFT's ``add_weighted_adapter(..., combination_type="cat")``. One part
    is a scaled adapter (its B times ``w·s``). A module that only some parts adapt gets zero
    blocks for the others. The rank grows with every part, so it must stay within ``max_rank``.
    """
    if not parts:
        raise LexloraError("a weighted adapter needs at least one part")
    loaded = []
    for path, weight in parts:
        config, weights = _composable(Path(path))
        rank = int(config["r"])
        loaded.append((config, _modules(weights), rank, lora_scaling(config) * weight))
    total = sum(rank for _, _, rank, _ in loaded)
    if max_rank is not None and total > max_rank:
        raise LexloraError(
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
                    raise LexloraError(f"adapter weights: {prefix} does not have rank {rank}")
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
    save_file(tensors, str(out / WEIGHTS_FILE))
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2), encoding="utf-8")
    return out
