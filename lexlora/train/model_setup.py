"""Load the base model and tokenizer for training, and wrap it with a (new or existing) LoRA."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import torch
from peft import PeftConfig, PeftModel, prepare_model_for_kbit_training
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from lexlora.artifacts.adapter import CONFIG_FILE, read_config
from lexlora.errors import LexloraError
from lexlora.models import resolve_base_model
from lexlora.recipe import Recipe
from lexlora.train.methods import peft_config


def quantization_for(mode: str, cuda: bool) -> tuple[Any | None, str]:
    """A ``BitsAndBytesConfig`` (or None) for ``model.quantization``, and a line describing it."""
    from transformers import BitsAndBytesConfig

    if mode == "auto":
        mode = "nf4" if cuda else "none"
    if mode == "none":
        where = "CUDA" if cuda else "CPU"
        return None, f"full precision on {where} (no quantization)"
    if mode == "int8":
        return BitsAndBytesConfig(load_in_8bit=True), "8-bit (bitsandbytes LLM.int8)"
    compute = torch.bfloat16 if cuda else torch.float32
    config = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute,
    )
    device = "CUDA" if cuda else "CPU (slow)"
    return (
        config,
        f"4-bit NF4, double quantisation, {str(compute).split('.')[-1]} compute on {device}",
    )


@dataclass
class LoadedBase:
    model: Any
    tokenizer: PreTrainedTokenizerBase
    path: str  # resolved directory or hub id
    quantized: bool
    description: str  # "4-bit NF4 ... on CUDA" / "full precision on CPU"
    cuda: bool


def load_base(recipe: Recipe) -> LoadedBase:
    """Base model and tokenizer as the recipe asks (quantised on CUDA by ``auto``)."""
    cuda = torch.cuda.is_available()
    path = resolve_base_model(recipe.model.base)
    quant, description = quantization_for(recipe.model.quantization, cuda)
    kwargs: dict[str, Any] = {"dtype": model_dtype(recipe.model.dtype, cuda)}
    if quant is not None:
        kwargs["quantization_config"] = quant
        kwargs["device_map"] = {"": 0} if cuda else {"": "cpu"}
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        set_chat_template(recipe, tokenizer)  # before the weights: a bad template fails fast
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as exc:
        raise load_error(recipe, exc) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if quant is not None:
        disable_cpu_4bit_inference_kernel(model)
    return LoadedBase(model, tokenizer, path, quant is not None, description, cuda)


def set_chat_template(recipe: Recipe, tokenizer: PreTrainedTokenizerBase) -> None:
    """Use ``model.chat_template`` (or the base's own) and check that it renders a conversation."""
    source = f"model.base '{recipe.model.base}'"
    if recipe.model.chat_template:
        template = Path(recipe.model.chat_template)
        source = f"model.chat_template: {template}"
        if not template.is_file():
            raise LexloraError(f"{source} not found")
        try:
            tokenizer.chat_template = template.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise LexloraError(f"{source}: not UTF-8 text") from None
    if tokenizer.chat_template is None:
        raise LexloraError(
            f"{source} has no chat template; set model.chat_template to a Jinja file"
        )
    sample = [
        {"role": "system", "content": "You are an assistant."},
        {"role": "user", "content": "A question?"},
        {"role": "assistant", "content": "An answer."},
    ]
    try:
        tokenizer.apply_chat_template(sample, tokenize=False)
    except jinja2.TemplateError as exc:
        raise LexloraError(
            f"{source}: the chat template cannot render a conversation ({first_line(exc)})"
        ) from None


def load_error(recipe: Recipe, exc: Exception) -> LexloraError:
    """The one-line error for a base model (or its config) that cannot be read."""
    return LexloraError(f"model.base '{recipe.model.base}': cannot load ({first_line(exc)})")


def first_line(exc: Exception) -> str:
    return (str(exc).strip() or type(exc).__name__).splitlines()[0]


def model_dtype(name: str, cuda: bool) -> torch.dtype:
    """The dtype ``model.dtype`` names (``auto``: bfloat16 on a GPU that has it, else float32)."""
    if name == "auto":
        return torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32
    return getattr(torch, name)


def disable_cpu_4bit_inference_kernel(model: Any) -> int:
    """Keep bitsandbytes 4-bit layers on the path that has a backward pass.

    On CPUs with AVX512-BF16, the first no-grad forward (an evaluation) repacks ``Linear4bit``
    weights for an inference-only kernel; LoRA gradients are then silently None and training
    stops learning. Returns the number of layers changed.
    """
    import bitsandbytes as bnb

    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    for layer in layers:
        layer.support_avx512bf16_for_cpu = False
    return len(layers)


def check_target_modules(model: Any, targets: list[str] | str) -> None:
    """Every ``lora.target_modules`` entry must name a linear layer of the base model
    (``"all-linear"`` always does)."""
    if isinstance(targets, str):
        return
    linear = sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) or type(module).__name__.startswith("Linear")
        }
    )
    missing = [t for t in targets if t not in linear]
    if missing:
        raise LexloraError(
            f"lora.target_modules: '{missing[0]}' is not a module of the base model; "
            f"its linear modules are: {', '.join(linear)}"
        )


def prepare_for_training(
    base: LoadedBase, recipe: Recipe, token_ids: list[int] | None = None
) -> tuple[Any, PeftConfig | None]:
    """The model to hand to SFTTrainer and the PEFT config (None when continuing an adapter);
    ``token_ids``: the new terms' ids, for a new-token method."""
    model = base.model
    if recipe.adapter.method in ("lora", "lora+new_tokens"):
        check_target_modules(model, recipe.lora.target_modules)
    if base.quantized:
        gc = recipe.train.gradient_checkpointing is not False
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gc)
    init = recipe.train.init_adapter
    if init is None:
        return model, peft_config(recipe, base.path, token_ids or [])
    folder = Path(init)
    config_file = folder / CONFIG_FILE
    if not config_file.is_file():
        raise LexloraError(f"train.init_adapter: {folder} is not a PEFT adapter folder")
    adapter_base = read_config(config_file).get("base_model_name_or_path")
    if adapter_base and Path(adapter_base).name != Path(base.path).name:
        raise LexloraError(
            f"train.init_adapter: {folder} was trained on '{adapter_base}', not on '{base.path}'"
        )
    return PeftModel.from_pretrained(model, str(folder), is_trainable=True), None
