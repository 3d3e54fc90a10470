"""`lexlora eval`: held-out scoring of base vs adapter, strength sweep, leakage refusal, report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from lexlora.artifacts.metrics import EvalMetrics
from lexlora.eval.local import load_local_scorer
from lexlora.eval.runner import evaluate
from lexlora.eval.tasks import EvalItem
from lexlora.recipe import validate_recipe

TASKS = {
    "tasks": {
        "modality": {"kind": "choice", "max_items": 8},
        "definition": {"kind": "open", "max_items": 6},
        "section": {"kind": "open", "max_items": 6},
    },
    "generation_items": 4,
    "max_new_tokens": 12,
}


def run_recipe(run: Path, tmp_path: Path, spec: dict = TASKS):
    tasks_file = tmp_path / "tasks.yaml"
    tasks_file.write_text(yaml.safe_dump(spec))
    raw = yaml.safe_load((run / "recipe.yaml").read_text())
    raw["eval"] = {**raw["eval"], "tasks_file": str(tasks_file), "sweep": [0.0, 0.5, 1.0]}
    return validate_recipe(raw)


@pytest.fixture(scope="module")
def scorer(tiny_run):
    recipe = yaml.safe_load((tiny_run / "recipe.yaml").read_text())
    return load_local_scorer(recipe["model"]["base"], tiny_run / "adapter")


def test_option_scores_with_shared_prompt_cache_equal_full_forward_passes(scorer):
    item = EvalItem(
        id="x",
        doc_id="d",
        task="modality",
        builder="obligations",
        kind="choice",
        prompt=[{"role": "user", "content": "Is this clause an obligation?"}],
        reference="Obligation.",
        choices=("Obligation.", "Permission.", "Prohibition."),
        label="Obligation.",
    )
    fast = scorer.choice_logprobs([item])[0]
    tok = scorer.tokenizer
    prompt = tok(scorer.prompt_text(item), add_special_tokens=False)["input_ids"]
    for choice, score in zip(item.choices, fast, strict=True):
        option = tok(choice + tok.eos_token, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prompt + option])
        with torch.no_grad():
            logprobs = torch.log_softmax(scorer.model(input_ids=ids).logits[0].float(), -1)
        slow = sum(logprobs[len(prompt) - 1 + j, t].item() for j, t in enumerate(option))
        assert abs(slow - score) < 1e-4


def test_eval_writes_report_with_intervals_and_a_verified_sweep(tiny_run, scorer, tmp_path):
    recipe = run_recipe(tiny_run, tmp_path)
    result = evaluate(recipe, scorer, recipe.dataset_dir, "tiny", out_root=tmp_path / "reports")
    m = result.metrics
    for name in ("metrics.json", "report.md", "report.html", "headline.png", "strength.png"):
        assert (result.report_dir / name).is_file(), name
    assert json.loads((result.report_dir / "metrics.json").read_text())["recipe"] == "tiny"
    assert "data:image/png;base64," in (result.report_dir / "report.html").read_text()
    head = m.headline
    assert {"choice_accuracy", "answer_nll", "token_f1"} <= set(head)
    nll = head["answer_nll"]
    assert nll.base.low <= nll.base.mean <= nll.base.high
    assert nll.difference.mean == pytest.approx(nll.adapter.mean - nll.base.mean, abs=1e-9)
    assert nll.adapter.mean < nll.base.mean  # the adapter learned these documents' style
    sweep = {point.scale: point for point in m.sweep}
    assert sweep[0.0].max_abs_diff_vs_base < 1e-4
    assert sweep[0.0].answer_nll == pytest.approx(nll.base.mean)
    assert sweep[1.0].answer_nll == pytest.approx(nll.adapter.mean)
    assert m.best_scale in sweep
    assert m.items.refused_training_documents == 0
    assert len(m.worst_examples) == 4
    saved = EvalMetrics.load(result.report_dir / "metrics.json")  # what every reader gets
    assert saved.headline == m.headline and saved.gate == m.gate.model_copy(update={"report": None})


def test_items_from_training_documents_are_refused(tiny_run, scorer, tmp_path):
    recipe = run_recipe(tiny_run, tmp_path)
    data = recipe.dataset_dir
    leaked = tmp_path / "data" / recipe.name
    leaked.mkdir(parents=True)
    for name in ("manifest.json", "documents.jsonl", "train.jsonl", "validation.jsonl"):
        (leaked / name).write_bytes((data / name).read_bytes())
    train_rows = (data / "train.jsonl").read_text().splitlines()
    test_rows = (data / "test.jsonl").read_text().splitlines()
    (leaked / "test.jsonl").write_text("\n".join(test_rows + train_rows[:5]) + "\n")
    result = evaluate(recipe, scorer, leaked, "tiny", sweep=[1.0], out_root=tmp_path / "r")
    assert result.metrics.items.refused_training_documents == 5
