"""``lora.target_modules``: module names, or "all-linear" (every linear layer but the head)."""

from __future__ import annotations

import pytest
from support import make_recipe

from lexlora.errors import LexloraError
from lexlora.recipe import load_recipe


def test_all_linear_puts_lora_on_attention_and_mlp(tiny_model, tmp_path):
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from lexlora.train.methods import peft_config
    from lexlora.train.model_setup import check_target_modules

    recipe = make_recipe(tmp_path, tiny_model, lora={"target_modules": "all-linear"})
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    check_target_modules(model, recipe.lora.target_modules)
    peft = get_peft_model(model, peft_config(recipe, recipe.model.base, []))
    adapted = {name.rsplit(".", 1)[-1] for name, m in peft.named_modules() if hasattr(m, "lora_A")}
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} <= adapted
    assert "lm_head" not in adapted


def test_target_modules_must_be_a_list_or_all_linear():
    with pytest.raises(LexloraError, match=r"lora\.target_modules"):
        load_recipe("legal_contracts", ["lora.target_modules=everything"])
    assert load_recipe("legal_contracts", ["lora.target_modules=all-linear"]).lora.target_modules
