"""`adapter.method`: LoRA, prompt tuning, new tokens and LoRA + new tokens train, publish and
evaluate from the same recipe (tiny model); the base they are compared with is the true base."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from support import METHODS, TERMS, make_recipe
from test_eval import run_recipe

from lexlora.adapter_methods import load_adapted
from lexlora.artifacts.adapter import ENGINES, read_new_tokens
from lexlora.errors import LexloraError
from lexlora.eval.local import load_local_scorer
from lexlora.eval.runner import evaluate
from lexlora.export.exporter import export_run
from lexlora.recipe import validate_recipe
from lexlora.registry import AdapterStore
from lexlora.train.trainer import train


@pytest.fixture(scope="module")
def runs(method_runs) -> dict[str, Path]:
    return method_runs


@pytest.mark.parametrize("method", METHODS)
def test_each_method_trains_only_its_own_parameters(runs, method):
    run = runs[method]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["method"] == method
    keys = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    hidden = 128
    lora = [k for k in keys if "lora_" in k]
    rows = [v for k, v in keys.items() if "trainable_tokens_delta" in k]
    assert bool(lora) == (method in ("lora", "lora+new_tokens"))
    assert not any("base_layer" in k or k.endswith("lm_head.weight") for k in keys)
    if method == "prompt_tuning":
        assert keys["prompt_embeddings"].shape == (4, hidden)
        assert summary["trainable_params"] == 4 * hidden
    if "new_tokens" in method:
        assert [tuple(r.shape) for r in rows] == [(len(TERMS), hidden)]
        assert read_new_tokens(run / "adapter")["terms"] == TERMS
        if method == "new_tokens":
            assert summary["trainable_params"] == len(TERMS) * hidden
    assert summary["eval_loss_adapter"] < summary["eval_loss_base"]


def test_new_terms_are_one_token_initialised_from_their_subwords(runs, tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tokenizer = load_adapted(str(tiny_model), runs["new_tokens"] / "adapter")
    base_tok = AutoTokenizer.from_pretrained(tiny_model)
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    vocab = len(base_tok)
    ids = tokenizer("the Effective Date of it", add_special_tokens=False)["input_ids"]
    assert vocab + 1 in ids and len(ids) < len(base_tok("the Effective Date of it")["input_ids"])
    # the untied output head gets the mean of the term's sub-word rows (not trained)
    sub = base_tok("Effective Date", add_special_tokens=False)["input_ids"]
    head = model.get_output_embeddings().weight
    assert torch.allclose(head[vocab + 1], base.lm_head.weight[sub].mean(0), atol=1e-6)
    # the input rows are the trained ones, not the initial mean
    trained = model.get_input_embeddings()(torch.tensor([vocab + 1]))[0]
    assert not torch.allclose(trained, base.model.embed_tokens.weight[sub].mean(0), atol=1e-4)


def test_every_method_publishes_with_its_method_and_engines(runs, tmp_path):
    store = AdapterStore(tmp_path / "store")
    for method, run in runs.items():
        name = method.replace("+", "-")
        version = export_run(run, "acme", name, store=store, force=True, log=lambda _: None)
        published = version.published
        assert published.method == method
        assert published.metadata["engines"] == list(ENGINES[method])
        files = {p.name for p in published.path.iterdir()}
        assert ("new_tokens.json" in files) == ("new_tokens" in method)
        assert ("tokenizer.json" in files) == ("new_tokens" in method)
        assert (published.rank > 0) == (method in ("lora", "lora+new_tokens"))


def test_lora_operations_are_refused_for_other_methods(runs, tmp_path):
    store = AdapterStore(tmp_path / "store")
    with pytest.raises(LexloraError, match="prompt_tuning adapter; only LoRA adapters can be"):
        export_run(runs["prompt_tuning"], "acme", "p", store=store, force=True, scale=0.5)
    assert store.list("acme") == []  # nothing half-published


def test_every_method_evaluates_against_the_same_true_base(runs, tmp_path):
    base_scores = {}
    for method, run in runs.items():
        (tmp_path / method).mkdir()
        recipe = run_recipe(run, tmp_path / method)
        scorer = load_local_scorer(recipe.model.base, run / "adapter")
        result = evaluate(recipe, scorer, recipe.dataset_dir, method, out_root=tmp_path / "r")
        base_scores[method] = result.metrics.headline["answer_nll"].base.mean
        scales = [point.scale for point in result.metrics.sweep]
        assert scales == ([0.0, 0.5, 1.0] if method == "lora" else [1.0])
    assert len({round(v, 5) for v in base_scores.values()}) == 1, base_scores


def test_unknown_method_is_a_one_line_error(tiny_model, tmp_path):
    raw = make_recipe(tmp_path, tiny_model).model_dump()
    raw["adapter"]["method"] = "dora"
    with pytest.raises(LexloraError, match=r"adapter\.method"):
        validate_recipe(raw)


def test_a_base_with_tied_embeddings_trains_new_tokens_on_an_untied_copy(tiny_model, tmp_path):
    """SmolLM2 ties its embeddings; TRL refuses an adapter on the head, so the head is untied and
    keeps each term's mean sub-word row while the input rows train."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(tiny_model)
    config.tie_word_embeddings = True
    torch.manual_seed(0)
    tied = tmp_path / "tied"
    AutoModelForCausalLM.from_config(config).save_pretrained(tied)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(tied)
    recipe = make_recipe(
        tmp_path, tied, adapter={"method": "new_tokens", "new_tokens": {"terms": TERMS}}
    )
    summary = train(recipe)
    assert summary.eval_loss_adapter < summary.eval_loss_base
    model, tokenizer = load_adapted(str(tied), Path(summary.adapter_dir))
    base = AutoModelForCausalLM.from_pretrained(tied)
    base_tok = AutoTokenizer.from_pretrained(tied)
    new_id = tokenizer.convert_tokens_to_ids(TERMS[0])
    sub = base_tok(TERMS[0], add_special_tokens=False)["input_ids"]
    mean = base.get_input_embeddings().weight[sub].mean(0)
    assert torch.allclose(model.get_output_embeddings().weight[new_id], mean, atol=1e-6)
    trained = model.get_input_embeddings()(torch.tensor([new_id]))[0]
    assert not torch.allclose(trained, mean, atol=1e-4)
