"""Yes/no metrics and the no-regression gate: a bad recipe is flagged and not published."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from support import make_recipe

from lexlora.artifacts.gate import GATE_FILE, GateVerdict, TooSmall
from lexlora.artifacts.metrics import Comparison
from lexlora.artifacts.metrics_text import gate_text
from lexlora.errors import LexloraError
from lexlora.eval.gate import gate_verdict, holm_rejections
from lexlora.eval.scores import comparison
from lexlora.eval.tasks import EvalItem, option_texts
from lexlora.eval.yesno import balanced_accuracy, yes_no_metrics
from lexlora.export.exporter import check_gate


def yes_no_items(labels: list[str], categories: list[str] | None = None) -> list[EvalItem]:
    return [
        EvalItem(
            id=str(n),
            doc_id=f"d{n}",
            task="clause_presence",
            builder="clause_presence",
            kind="choice",
            prompt=[{"role": "user", "content": "?"}],
            reference=label,
            choices=("Yes", "No"),
            label=label,
            category=(categories or ["c"] * len(labels))[n],
        )
        for n, label in enumerate(labels)
    ]


def test_balanced_accuracy_is_blind_to_a_constant_answer():
    labels = ["Yes"] * 30 + ["No"] * 10
    items = yes_no_items(labels, ["a", "b"] * 20)
    always_yes = [1.0 if lab == "Yes" else 0.0 for lab in labels]  # correct on every Yes
    perfect = [1.0] * 40
    m = yes_no_metrics(items, always_yes, perfect, seed=0)
    assert m.accuracy.base.mean == pytest.approx(0.75)  # looks good, is not
    ba = m.balanced_accuracy
    assert ba.base.mean == pytest.approx(0.5) and ba.adapter.mean == 1.0
    assert ba.base.low <= 0.5 <= ba.base.high
    assert ba.difference.improved and not ba.difference.worse
    assert (m.yes_rate.base, m.yes_rate.adapter) == (1.0, pytest.approx(0.75))
    assert set(m.by_category) == {"a", "b"} and m.by_category["a"].base.n == 20
    # one class only: balanced accuracy is undefined, not 0 or 1
    assert (
        yes_no_metrics(yes_no_items(["No"] * 4), [1.0] * 4, [0.0] * 4, 0).balanced_accuracy is None
    )
    is_yes = np.array([True, True, False, False])
    assert balanced_accuracy(is_yes, np.array([1.0, 0.0, 1.0, 1.0])) == pytest.approx(0.75)


def test_a_fact_asked_in_several_wordings_counts_once_in_the_interval():
    """Recall items of one fact (``group``) are resampled together: asking each fact in three
    wordings that the models answer alike gives the interval of the facts asked once, not a
    narrower one; without groups, the tripled items would look three times as many."""
    rng = np.random.default_rng(1)
    labels = ["Yes"] * 20 + ["No"] * 20
    base, adapter = rng.integers(0, 2, 40).astype(float), rng.integers(0, 2, 40).astype(float)
    once = yes_no_metrics(yes_no_items(labels), base, adapter, seed=0).balanced_accuracy
    tripled = [
        EvalItem(**{**item.__dict__, "id": f"{item.id}.{k}", "group": item.id})
        for item in yes_no_items(labels)
        for k in range(3)
    ]
    grouped = yes_no_metrics(tripled, np.repeat(base, 3), np.repeat(adapter, 3), 0)
    ba = grouped.balanced_accuracy
    assert ba.difference.mean == pytest.approx(once.difference.mean)
    assert (ba.difference.low, ba.difference.high) == pytest.approx(
        (once.difference.low, once.difference.high), abs=0.03
    )
    plain = yes_no_metrics(yes_no_items(labels), base, adapter, seed=0).accuracy.difference
    acc = grouped.accuracy.difference
    assert acc.mean == pytest.approx(plain.mean)
    assert (acc.low, acc.high) == pytest.approx((plain.low, plain.high), abs=0.03)
    ungrouped = [EvalItem(**{**item.__dict__, "group": None}) for item in tripled]
    narrow = yes_no_metrics(ungrouped, np.repeat(base, 3), np.repeat(adapter, 3), 0)
    width = narrow.balanced_accuracy.difference.high - narrow.balanced_accuracy.difference.low
    assert width < 0.75 * (ba.difference.high - ba.difference.low)


def test_yes_no_options_are_scored_as_the_first_word():
    item = yes_no_items(["Yes"])[0]
    assert option_texts(item, "<end>") == ["Yes", "No"]
    opens = EvalItem("x", "d", "t", "b", "choice", [], "B. because", ("A.", "B."), "B.")
    assert option_texts(opens, "<end>") == ["A.", "B."]
    whole = EvalItem("x", "d", "t", "b", "choice", [], "Permissive.", ("Copyleft.", "Permissive."))
    whole = EvalItem(**{**whole.__dict__, "label": "Permissive."})
    assert option_texts(whole, "<end>") == ["Copyleft.<end>", "Permissive.<end>"]


def stat(mean: float) -> dict:
    return {"mean": mean, "low": mean - 0.01, "high": mean + 0.01, "n": 50}


def row(metric: str, base: float, adapter: float, low: float, high: float, p: float) -> Comparison:
    return Comparison.model_validate(
        {
            "metric": metric,
            "base": stat(base),
            "adapter": stat(adapter),
            "difference": {
                "mean": adapter - base,
                "low": low,
                "high": high,
                "improved": False,
                "worse": (high < 0) if metric != "answer_nll" else (low > 0),
                "p_worse": p,
            },
        }
    )


def test_gate_verdict_names_each_significantly_worse_family(tmp_path):
    tasks = {
        "definition": row("answer_nll", 2.0, 2.6, 0.4, 0.8, 0.001),  # worse: loss went up
        "modality": row("accuracy", 0.5, 0.45, -0.15, 0.05, 0.2),  # spans 0: not flagged
    }
    headline = {"yes_no_balanced_accuracy": row("balanced_accuracy", 0.6, 0.4, -0.3, -0.1, 0.001)}
    verdict = gate_verdict(tasks, headline)
    assert not verdict.passed
    assert [f.family for f in verdict.flagged] == [
        "task definition",
        "headline yes_no_balanced_accuracy",
    ]
    run = tmp_path / "run"
    run.mkdir()
    messages: list[str] = []
    check_gate(run, force=False, log=messages.append)  # never evaluated: a warning, not a refusal
    assert "no held-out evaluation" in messages[0]
    verdict.save(run, Path("r"))
    assert GateVerdict.load(run) == verdict.model_copy(update={"report": "r"})
    with pytest.raises(LexloraError, match=r"gate flagged 2 task families.*--force"):
        check_gate(run, force=False)
    check_gate(run, force=True, log=messages.append)
    assert "because of --force" in messages[-1]


def test_holm_rejections_step_down():
    # sorted: 0.005 < 0.05/4, 0.01 < 0.05/3, then 0.03 >= 0.05/2 stops the procedure
    assert holm_rejections([0.01, 0.04, 0.03, 0.005], alpha=0.05) == [True, False, False, True]
    assert holm_rejections([0.02], alpha=0.025) == [True]
    assert holm_rejections([], alpha=0.025) == []


def family(metric: str, adapter: list[float], base: list[float]) -> Comparison:
    return comparison(adapter, base, metric)


def test_gate_needs_enough_items_and_corrects_for_many_families():
    """A family under 30 items is listed, not gated; a family that only an uncorrected interval
    calls worse is not flagged once Holm's correction accounts for the other families."""
    ones = [1.0] * 40
    clearly_worse = family("accuracy", [0.0] * 20 + [1.0] * 20, ones)
    borderline = family("accuracy", [0.0] * 4 + [1.0] * 36, ones)  # p ≈ 0.9**40 ≈ 0.015
    improved = family("accuracy", ones, [0.0] * 20 + [1.0] * 20)
    tiny_and_worse = family("token_f1", [0.0] * 12, [1.0] * 12)
    assert borderline.difference.worse, "uncorrected, the 95% interval excludes zero"
    assert 0.0125 <= borderline.difference.p_worse < 0.025
    tasks = {"a": clearly_worse, "b": borderline, "c": improved}
    verdict = gate_verdict(tasks, {"token_f1": tiny_and_worse})
    assert [f.family for f in verdict.flagged] == ["task a"]
    assert verdict.gated == 3
    assert verdict.too_small == [TooSmall(family="headline token_f1", metric="token_f1", n=12)]
    # the same borderline family alone is flagged: with one family Holm is the plain interval
    assert not gate_verdict({"b": borderline}, {}).passed
    lines = gate_text(verdict)
    assert [(line.text, line.tone) for line in (lines[0], lines[-1])] == [
        ("no-regression gate: FLAGGED (1 of 3 families)", "worse"),
        ("not gated, fewer than 30 items: headline token_f1 (n=12)", "neutral"),
    ]


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    cmd = [sys.executable, "-m", "lexlora.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=600)


def fit_base(model_dir: Path, train_file: Path, out: Path, steps: int = 60) -> Path:
    """A tiny base that already answers this data's questions (a full fine-tune on the chat-
    formatted training pairs), so that an adapter has something to break."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    rows = [json.loads(line)["messages"] for line in train_file.read_text().splitlines()]
    ids = [tok.apply_chat_template(m, tokenize=True, return_dict=True)["input_ids"] for m in rows]
    ids = [seq[:128] for seq in ids]
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(steps):
        batch = [ids[(step * 8 + i) % len(ids)] for i in range(8)]
        width = max(len(b) for b in batch)
        x = torch.tensor([b + [tok.pad_token_id] * (width - len(b)) for b in batch])
        labels = torch.tensor([b + [-100] * (width - len(b)) for b in batch])
        model(input_ids=x, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_gate_stops_a_deliberately_bad_recipe(tiny_model, tmp_path):
    """On a base that knows the data, a bad recipe (LoRA alpha 1024 with learning rate 0.05:
    updates ~1000x too large) wrecks the answers. `lexlora eval` flags the run and
    `lexlora export` refuses to publish it unless --force."""
    from lexlora.data.build import build_dataset
    from lexlora.train.trainer import train

    data_recipe = make_recipe(tmp_path, tiny_model)
    build_dataset(data_recipe)
    base = fit_base(tiny_model, data_recipe.dataset_dir / "train.jsonl", tmp_path / "base")
    bad = make_recipe(
        tmp_path, base, train={"learning_rate": 0.05, "eval_steps": 12}, lora={"alpha": 1024}
    )
    run = Path(train(bad).run_dir)
    tasks = tmp_path / "tasks.yaml"
    tasks.write_text(
        yaml.safe_dump(
            {
                "tasks": {
                    "definition": {"kind": "open", "max_items": 12},
                    "section": {"kind": "open", "max_items": 12},
                    "obligation": {"kind": "open", "max_items": 12},
                },
                "generation_items": 0,
            }
        )
    )
    recipe_file = run / "recipe.yaml"
    evaluated = cli(
        "eval",
        str(recipe_file),
        "--run",
        str(run),
        "--sweep",
        "1",
        "--set",
        f"eval.tasks_file={tasks}",
        "--set",
        "eval.gate_min_items=8",  # the tiny corpus has 20 open test items
        cwd=tmp_path,
    )
    assert evaluated.returncode == 0, evaluated.stderr
    assert "no-regression gate: FLAGGED" in evaluated.stdout, evaluated.stdout
    gate = json.loads((run / GATE_FILE).read_text())
    assert not gate["passed"]
    assert any(f["metric"] == "answer_nll" for f in gate["flagged"])

    out = tmp_path / "store"
    args = ["export", str(run), "--tenant", "acme", "--name", "bad", "--store", str(out)]
    refused = cli(*args, cwd=tmp_path)
    assert refused.returncode == 2
    assert len(refused.stderr.strip().splitlines()) == 1
    assert "no-regression gate flagged" in refused.stderr and "--force" in refused.stderr
    assert not (out / "acme").exists()  # nothing published
    forced = cli(*args, "--force", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert "exported acme/bad:1" in forced.stdout.replace("\n", " ")
