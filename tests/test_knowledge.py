"""``knowledge``: closed-book yes/no facts about named training documents, and the recall track."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from support import folder_recipe, write_contract_folder

from lexlora.data.build import build_dataset
from lexlora.data.builders.knowledge import LABEL_TEMPLATES, PRESENCE_TEMPLATES
from lexlora.errors import LexloraError
from lexlora.eval.tasks import EvalSpec, RecallSpec, load_recall
from lexlora.taxonomy import load_taxonomy


def knowledge_recipe(tmp: Path, out: str, **builder):
    folder = tmp / "contracts"
    if not folder.exists():
        write_contract_folder(folder, n_docs=30)
    cfg = {
        "balance": True,
        "max_per_document": 200,
        "options": {"taxonomy": "commercial_contracts", "label_field": "category"},
        **builder,
    }
    return folder_recipe(
        folder,
        tmp / out,
        builders={
            "clause_presence": {"options": {"taxonomy": "commercial_contracts"}},
            "knowledge": cfg,
        },
        split={"validation": 0.2, "test": 0.2, "stratify_by": "category", "seed": 3},
    )


def rows(folder: Path, split: str) -> list[dict]:
    return [json.loads(line) for line in (folder / f"{split}.jsonl").read_text().splitlines()]


def test_facts_of_training_documents_in_several_wordings_balanced(tmp_path):
    recipe = knowledge_recipe(tmp_path, "out")
    build_dataset(recipe)
    out = recipe.dataset_dir
    docs = {d["id"]: d for d in map(json.loads, (out / "documents.jsonl").read_text().splitlines())}
    train = [r for r in rows(out, "train") if r["meta"]["builder"] == "knowledge"]
    assert train
    # closed-book: no other split gets knowledge pairs, and no excerpt is in the question
    for split in ("validation", "test"):
        assert not [r for r in rows(out, split) if r["meta"]["builder"] == "knowledge"]
    presence = {
        (r["meta"]["doc_id"], r["meta"]["category"]): r["meta"]["label"]
        for r in rows(out, "train")
        if r["meta"]["builder"] == "clause_presence"
    }
    tax = {c.id: c for c in load_taxonomy("commercial_contracts").categories}
    wordings: dict[tuple, set[str]] = {}
    per_category: dict[tuple, Counter] = {}
    for r in train:
        meta, question, answer = (
            r["meta"],
            r["messages"][-2]["content"],
            r["messages"][-1]["content"],
        )
        doc = docs[meta["doc_id"]]
        assert doc["split"] == "train" and doc["title"] in question
        assert '"' not in question  # nothing quoted from the document: closed-book
        assert answer.split(".")[0] == meta["label"] and meta["choices"] == ["Yes", "No"]
        key = (meta["doc_id"], meta["task"], meta["category"])
        wordings.setdefault(key, set()).add(question)
        per_category.setdefault((meta["task"], meta["category"]), Counter())[meta["label"]] += 1
        if meta["task"] == "knowledge_presence":
            assert tax[meta["category"]].spec.absent in question
            # the same verdict the reading pair about this document teaches, where there is one
            seen = presence.get((meta["doc_id"], meta["category"]))
            assert seen in (None, meta["label"])
        else:
            value = doc["metadata"]["category"]
            assert (meta["category"] == value) == (meta["label"] == "Yes")
    # each fact restated in 3 wordings (the default), balanced Yes/No per category
    assert {len(w) for w in wordings.values()} == {3}
    assert all(len(set(c.values())) == 1 for c in per_category.values()), per_category


def test_fraction_covers_a_seeded_share_of_the_training_documents(tmp_path):
    def covered(out: str, **options) -> set[str]:
        opts = {"taxonomy": "commercial_contracts", **options}
        recipe = knowledge_recipe(tmp_path, out, options=opts)
        build_dataset(recipe)
        train = rows(recipe.dataset_dir, "train")
        return {r["meta"]["doc_id"] for r in train if r["meta"]["builder"] == "knowledge"}

    everyone, some = covered("all"), covered("some", fraction=0.4)
    assert some and some < everyone
    assert covered("again", fraction=0.4) == some  # seeded: the same documents every build


def test_facts_per_document_and_questions_without_the_system_prompt(tmp_path):
    """``facts_per_document`` keeps whole facts (each in all its wordings), and
    ``without_system_prompt`` asks that share of the questions as a user of the endpoint would."""
    opts = {"taxonomy": "commercial_contracts", "label_field": "category"}
    recipe = knowledge_recipe(
        tmp_path,
        "out",
        options={**opts, "paraphrases": 4, "facts_per_document": 2, "without_system_prompt": 0.5},
    )
    build_dataset(recipe)
    train = [r for r in rows(recipe.dataset_dir, "train") if r["meta"]["builder"] == "knowledge"]
    facts: dict[str, set[tuple]] = {}
    wordings: Counter = Counter()
    for r in train:
        key = (r["meta"]["task"], r["meta"]["category"])
        facts.setdefault(r["meta"]["doc_id"], set()).add(key)
        wordings[(r["meta"]["doc_id"], *key)] += 1
    assert facts and max(len(f) for f in facts.values()) <= 2
    assert set(wordings.values()) == {4}  # a kept fact keeps all its wordings
    roles = Counter(r["messages"][0]["role"] for r in train)
    assert roles["user"] > 0 and roles["system"] > 0
    assert 0.3 < roles["user"] / len(train) < 0.7


def test_recall_asks_each_fact_in_several_held_out_wordings(tmp_path):
    recipe = knowledge_recipe(tmp_path, "out")
    build_dataset(recipe)
    options = {n: dict(b.options) for n, b in recipe.data.builders.items()}
    spec = EvalSpec(tasks={}, recall=RecallSpec(**RECALL, wordings_per_fact=2))
    items = load_recall(spec, recipe.dataset_dir, options)
    by_fact: dict[str, list] = {}
    for item in items:
        by_fact.setdefault(item.group, []).append(item)
    assert len(by_fact) >= 10
    for fact in by_fact.values():
        wordings = {i.prompt[-1]["content"] for i in fact}
        # presence facts have two wordings in RECALL, label facts one: every one is asked
        assert len(wordings) == len(fact) == (2 if "category: " not in fact[0].category else 1)
        assert len({(i.doc_id, i.category, i.label) for i in fact}) == 1
    labels = Counter(fact[0].label for fact in by_fact.values())
    assert labels["Yes"] == labels["No"]  # balanced by fact


def test_option_errors_are_one_line(tmp_path):
    for options, message in (
        ({}, "set taxonomy"),
        ({"taxonomy": "commercial_contracts", "categories": ["nope"]}, "unknown category 'nope'"),
        (
            {"taxonomy": "commercial_contracts", "paraphrases": 0},
            r"option 'paraphrases': input should be greater than or equal to 1",
        ),
        ({"label_field": "category", "colour": 1}, "unknown key 'colour'"),
        (
            {"label_field": "category", "fraction": 0},
            r"option 'fraction': input should be greater than 0",
        ),
        ({"label_field": "category", "facts_per_document": 0}, "option 'facts_per_document'"),
        (
            {"label_field": "category", "without_system_prompt": 2},
            "option 'without_system_prompt': input should be less than or equal to 1",
        ),
    ):
        recipe = knowledge_recipe(tmp_path, "out", options=options)
        with pytest.raises(LexloraError, match=message) as err:
            build_dataset(recipe)
        assert "\n" not in str(err.value)
        assert not (tmp_path / "out").exists()


def test_templates_are_distinct_wordings():
    assert len(set(PRESENCE_TEMPLATES)) == len(PRESENCE_TEMPLATES) >= 3
    assert len(set(LABEL_TEMPLATES)) == len(LABEL_TEMPLATES) >= 3


RECALL = {
    "max_items": 400,
    "presence": [
        "Think of {title}. Would a reader find in it any clause that {absent}?",
        "Someone asks whether {title} contains wording that {absent}. Is that right?",
    ],
    "label": ["Would {title} be filed under the {noun} {value}?"],
}


def test_recall_items_ask_training_facts_in_new_wordings(tmp_path):
    recipe = knowledge_recipe(tmp_path, "out")
    build_dataset(recipe)
    out = recipe.dataset_dir
    spec = EvalSpec(tasks={}, recall=RecallSpec(**RECALL))
    options = {n: dict(b.options) for n, b in recipe.data.builders.items()}
    items = load_recall(spec, out, options)
    train = rows(out, "train")
    facts = {
        (r["meta"]["doc_id"], r["meta"]["category"]): r["meta"]["label"]
        for r in train
        if r["meta"]["builder"] == "knowledge"  # the first listed builder with pairs
    }
    questions = {r["messages"][-2]["content"] for r in train}
    train_docs = set(json.loads((out / "manifest.json").read_text())["split"]["doc_ids"]["train"])
    assert len(items) >= 20
    labels = Counter(i.label for i in items)
    assert labels["Yes"] == labels["No"]  # balanced
    for item in items:
        question = item.prompt[-1]["content"]
        assert item.doc_id in train_docs and question not in questions
        assert question.endswith("Reply Yes or No first.") and item.choices == ("Yes", "No")
        category = item.category.removeprefix("category: ")
        assert facts[(item.doc_id, category)] == item.label
    assert {i.category.startswith("category: ") for i in items} == {True, False}
    # a wording that a training pair already uses is never asked
    clash = RecallSpec(**{**RECALL, "presence": [PRESENCE_TEMPLATES[0]], "label": []})
    spec = EvalSpec(tasks={}, recall=clash.model_copy(update={"suffix": "Answer Yes or No first."}))
    asked = load_recall(spec, out, options)
    assert all(i.prompt[-1]["content"] not in questions for i in asked)


def test_recall_track_in_metrics_report_and_summary(tiny_run, tmp_path):
    """Evaluation of a run reports the recall track with intervals and every yes-rate."""
    import yaml

    from lexlora.artifacts.metrics_text import yes_rate_text
    from lexlora.eval.local import load_local_scorer
    from lexlora.eval.runner import evaluate

    recipe = knowledge_recipe(tmp_path, "out")
    build_dataset(recipe)
    tasks = tmp_path / "tasks.yaml"
    spec = {"tasks": {"clause_presence": {"kind": "choice", "max_items": 8}}, "recall": RECALL}
    tasks.write_text(yaml.safe_dump({**spec, "generation_items": 0}))
    recipe = recipe.model_copy(
        update={"eval": recipe.eval.model_copy(update={"tasks_file": str(tasks), "sweep": [1.0]})}
    )
    base = yaml.safe_load((tiny_run / "recipe.yaml").read_text())["model"]["base"]
    scorer = load_local_scorer(base, tiny_run / "adapter")
    result = evaluate(recipe, scorer, recipe.dataset_dir, "tiny", out_root=tmp_path / "r")
    m = result.metrics
    recall = m.headline["recall_balanced_accuracy"]
    assert recall.base.n == m.recall.n == m.items.recall >= 20
    assert recall.difference.low <= recall.difference.mean <= recall.difference.high
    assert "recall (closed-book)" in yes_rate_text(m)
    assert (
        "closed-book questions about training documents"
        in (result.report_dir / "report.md").read_text()
    )


def test_shipped_recall_wordings_are_not_the_builders():
    from lexlora.eval.tasks import load_spec, spec_path

    spec = load_spec(spec_path("legal_contracts", None))
    assert spec.recall is not None and spec.recall.max_items >= 100
    ours = {t.format(title="T", absent="A") for t in spec.recall.presence}
    theirs = {t.format(title="T", absent="A") for t in PRESENCE_TEMPLATES}
    theirs |= {c.question("T") for c in load_taxonomy("licenses").categories}
    assert ours and not ours & theirs
    values = {"title": "T", "value": "V", "noun": "N"}
    ours = {t.format(**values) for t in spec.recall.label}
    assert ours and not ours & {t.format(**values) for t in LABEL_TEMPLATES}
