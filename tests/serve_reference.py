"""HF + PEFT references shared by the serving tests: what a served model must reproduce."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.helpers import rescale_adapter_scale
from transformers import AutoModelForCausalLM, AutoTokenizer

N = 16  # completion tokens in the comparisons


def random_adapter(tiny_model: Path, out: Path, rank: int = 4, seed: int = 3) -> Path:
    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "o_proj"])
    model = get_peft_model(base, config)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.3)
    model.save_pretrained(out)
    return out


def offline_model(tiny_model, parts=()):
    """The base model with PEFT: one adapter, or several combined with
    ``add_weighted_adapter(cat)``."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    if parts:
        model = PeftModel.from_pretrained(model, str(parts[0][0]), adapter_name="p0")
        for i, (path, _) in enumerate(parts[1:], 1):
            model.load_adapter(str(path), adapter_name=f"p{i}")
        if len(parts) > 1:
            names = [f"p{i}" for i in range(len(parts))]
            model.add_weighted_adapter(names, [w for _, w in parts], "mix", combination_type="cat")
            model.set_adapter("mix")
        model.eval()
    return model


def offline(tiny_model, ids: list[int], parts=(), scale: float | None = None, n: int = N) -> str:
    """Greedy HF ``generate`` with PEFT (:func:`offline_model`, optionally rescaled)."""
    model = offline_model(tiny_model, parts)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    with torch.no_grad(), rescale_adapter_scale(model, scale) if scale else nullcontext():
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False)
    return tokenizer.decode(out[0, len(ids) :], skip_special_tokens=True)


def offline_logprobs(tiny_model, ids: list[int], parts=(), scale: float | None = None):
    """``log_softmax`` of one unpadded forward pass over ``ids``: ``[len(ids), vocab]``, row i
    predicting token i + 1."""
    model = offline_model(tiny_model, parts)
    with torch.no_grad(), rescale_adapter_scale(model, scale) if scale else nullcontext():
        logits = model(input_ids=torch.tensor([ids])).logits[0]
    return torch.log_softmax(logits.float(), dim=-1)
