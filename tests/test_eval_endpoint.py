"""`lexlora eval --endpoint`: the same evaluation through the project's own OpenAI server, figure
for figure (options and answer loss by echo log-likelihood, generations by chat)."""

from __future__ import annotations

import pytest
import yaml
from test_eval import run_recipe

from lexlora.eval.endpoint import EndpointScorer
from lexlora.eval.local import load_local_scorer
from lexlora.eval.runner import evaluate
from lexlora.eval.tasks import load_spec, option_texts, select_items, spec_path
from lexlora.export.exporter import export_run
from lexlora.registry import AdapterStore
from lexlora.serve.launch import serve_process
from lexlora.serve.tenants import hash_key

KEY = "sk-eval-endpoint"
SPEC = {
    "tasks": {
        "modality": {"kind": "choice", "max_items": 4},
        "section": {"kind": "open", "max_items": 4},
        "obligation": {"kind": "open", "max_items": 2},
    },
    "generation_items": 4,
    "max_new_tokens": 10,
}


@pytest.fixture(scope="module")
def endpoint(tiny_model, tiny_run, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eval-endpoint")
    store = AdapterStore(tmp / "store")
    export_run(tiny_run, "acme", "contracts", store=store, log=lambda *_: None)
    config = {
        "base_model": str(tiny_model),
        "store": str(store.root),
        "threads": 1,
        "tenants": {"acme": {"api_key_sha256": [hash_key(KEY)]}},
    }
    with serve_process(config, tmp) as served:
        yield served.url


def scorers_and_items(endpoint, tiny_model, tiny_run, tmp_path):
    """The served scorer, the in-process one, and the evaluation items of the test recipe."""
    recipe = run_recipe(tiny_run, tmp_path, SPEC)
    remote = EndpointScorer(endpoint, KEY, "base", "contracts", str(tiny_model))
    local = load_local_scorer(str(tiny_model), tiny_run / "adapter")
    spec = load_spec(spec_path(recipe.name, recipe.eval.tasks_file))
    items, _ = select_items(recipe.dataset_dir, spec, seed=0)
    return remote, local, items


def test_endpoint_generations_equal_in_process_ones(endpoint, tiny_model, tiny_run, tmp_path):
    remote, local, items = scorers_and_items(endpoint, tiny_model, tiny_run, tmp_path)
    open_items = [i for i in items if i.kind == "open"][:3]
    assert len(open_items) == 3
    for scale in (None, 1.0):
        with remote.variant(scale), local.variant(scale):
            assert remote.generate(open_items, 10) == local.generate(open_items, 10)


def test_endpoint_likelihoods_equal_in_process_ones(endpoint, tiny_model, tiny_run, tmp_path):
    remote, local, items = scorers_and_items(endpoint, tiny_model, tiny_run, tmp_path)
    choice = [i for i in items if i.kind == "choice"]
    open_items = [i for i in items if i.kind == "open"]
    assert choice and open_items
    for scale in (None, 1.0, 0.5):
        with remote.variant(scale), local.variant(scale):
            served, offline = remote.choice_logprobs(choice), local.choice_logprobs(choice)
            for a, b in zip(served, offline, strict=True):
                assert a == pytest.approx(b, abs=1e-4)
            nll = remote.answer_nll(open_items)
            assert nll == pytest.approx(local.answer_nll(open_items), abs=1e-4)
    assert remote.echo_supported is True


def test_endpoint_eval_writes_a_report(endpoint, tiny_model, tiny_run, tmp_path):
    recipe = run_recipe(tiny_run, tmp_path, SPEC)
    recipe = recipe.model_copy(update={"eval": recipe.eval.model_copy(update={"sweep": [1.0]})})
    remote = EndpointScorer(endpoint, KEY, "base", "contracts", str(tiny_model))
    result = evaluate(recipe, remote, recipe.dataset_dir, "contracts", out_root=tmp_path / "r")
    head = result.metrics.headline
    assert {"choice_accuracy", "token_f1"} <= set(head), result.metrics.items
    assert "answer_nll" in head and remote.echo_supported is True  # by echo log-likelihood
    assert (result.report_dir / "report.html").is_file()
    assert (
        yaml.safe_load((result.report_dir / "metrics.json").read_text())["adapter"] == "contracts"
    )


def test_single_token_options_are_read_from_the_next_token_and_equal_in_process(
    endpoint, tiny_model, tiny_run, tmp_path
):
    """Single-token options (Yes/No on a real tokenizer; two one-token words of the tiny one,
    as the opening of the reference) come from the top log-probs of one generated token, not
    from an echo of every prompt position: the same figures, a fraction of the work."""
    import dataclasses

    remote, local, items = scorers_and_items(endpoint, tiny_model, tiny_run, tmp_path)
    with remote.variant(None):  # two one-token words the base finds likely after a prompt
        (likely,) = remote._top_logprobs([remote._ids(remote.prompt_text(items[0]))])
    words = [w for w in likely if w.startswith(" ") and remote._one_token(remote._ids(w))]
    assert len(words) >= 2, likely
    first, second = words[:2]
    quick = [
        dataclasses.replace(item, choices=(first, second), label=first, reference=f"{first} is")
        for item in items
    ]
    assert option_texts(quick[0], remote.end) == [first, second]  # scored alone, one token each
    for scale in (None, 1.0, 0.5):
        with remote.variant(scale), local.variant(scale):
            served, offline = remote.choice_logprobs(quick), local.choice_logprobs(quick)
            for a, b in zip(served, offline, strict=True):
                assert a == pytest.approx(b, abs=1e-4)
    # read from the next token where both options are in the top 20, else by echo
    assert remote.next_token_supported is True and remote.read_from_next_token > 0
