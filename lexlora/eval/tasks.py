"""What to score: the task definitions in ``eval/RECIPE.yaml`` and the held-out items they select.

Each test pair has a ``meta.task`` (definition, category, code_to_description, ...). A task is
scored either as ``choice`` (the options are in the pair: accuracy by log-likelihood of each option)
or ``open`` (answer perplexity on the reference; exact match, token F1 and ROUGE-L of a greedy
generation on a subset). Items whose document is in the training split are refused.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lexlora.errors import LexloraError
from lexlora.io import read_jsonl
from lexlora.recipe import REPO_ROOT


class TaskSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["choice", "open"]
    max_items: int = Field(24, gt=0)


class RecallSpec(BaseModel):
    """The *recall* track: closed-book yes/no questions about training documents, asked in
    wordings that no builder template uses (held-out paraphrases of the facts it taught)."""

    model_config = ConfigDict(extra="forbid")
    builders: list[str] = Field(
        default_factory=lambda: ["knowledge", "clause_presence"],
        min_length=1,
        description="Where the facts (document, category, Yes/No) come from: the first of these "
        "builders that has training pairs.",
    )
    max_items: int = Field(240, gt=1, le=100_000, description="Balanced: half Yes, half No.")
    presence: list[str] = Field(
        default_factory=list, description="Wordings with {title} and {absent}."
    )
    label: list[str] = Field(
        default_factory=list, description="Wordings with {title}, {value} and {noun}."
    )
    suffix: str = "Reply Yes or No first."


class EvalSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tasks: dict[str, TaskSpec]
    generation_items: int = Field(16, ge=0, description="Open items also scored by generation.")
    max_new_tokens: int = Field(48, gt=0)
    sanity: str | None = Field(None, description="Fixed, independently labelled items (JSONL).")
    recall: RecallSpec | None = None


@dataclass(frozen=True)
class EvalItem:
    id: str
    doc_id: str
    task: str
    builder: str
    kind: str  # "choice" | "open"
    prompt: list[dict[str, str]]  # system + user messages
    reference: str
    choices: tuple[str, ...] = ()
    label: str | None = None
    category: str | None = None  # the taxonomy category of a clause-presence item


def option_texts(item: EvalItem, end: str) -> list[str]:
    """What is scored for each option. An option that is the whole answer (a category, a
    heading) is followed by the end-of-turn token ``end``. An option that only opens the answer
    ("Yes" of "Yes. The licence says: …"), and Yes/No always, is scored alone, as the answer's
    first tokens: whether a model goes on to explain is not what a yes/no question asks."""
    opens_answer = tuple(item.choices) == ("Yes", "No") or (
        item.label is not None
        and item.reference != item.label
        and item.reference.startswith(item.label)
    )
    return [c if opens_answer else c + end for c in item.choices]


def spec_path(recipe_name: str, tasks_file: str | None) -> Path:
    return Path(tasks_file) if tasks_file else REPO_ROOT / "eval" / f"{recipe_name}.yaml"


def load_spec(path: Path) -> EvalSpec:
    if not path.is_file():
        raise LexloraError(f"{path}: no evaluation task definitions (set eval.tasks_file)")
    try:
        spec = EvalSpec.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise LexloraError(f"{path}: field '{where}': {err['msg'].lower()}") from None
    if spec.sanity is not None:
        spec.sanity = str(path.parent / spec.sanity)
    return spec


def training_documents(data_dir: Path) -> set[str]:
    manifest = json.loads((data_dir / "manifest.json").read_text(encoding="utf-8"))
    return set(manifest["split"]["doc_ids"]["train"])


def select_items(
    data_dir: Path, spec: EvalSpec, seed: int, max_items: int | None = None
) -> tuple[list[EvalItem], int]:
    """Seeded per-task samples of the test split; returns the items and how many were refused
    because their document is in the training split."""
    train_docs = training_documents(data_dir)
    by_task: dict[str, list[EvalItem]] = {}
    refused = 0
    for n, row in enumerate(read_jsonl(data_dir / "test.jsonl")):
        meta = row["meta"]
        task = spec.tasks.get(meta["task"])
        if task is None:
            continue
        if meta["doc_id"] in train_docs:
            refused += 1
            continue
        by_task.setdefault(meta["task"], []).append(_item(f"test:{n}", row, task.kind))
    items = []
    for name in sorted(by_task):
        rng = random.Random(f"{seed}:{name}")
        pool = by_task[name]
        k = min(spec.tasks[name].max_items, len(pool))
        items.extend(pool[i] for i in sorted(rng.sample(range(len(pool)), k)))
    if max_items is not None and len(items) > max_items:
        rng = random.Random(f"{seed}:all")
        items = [items[i] for i in sorted(rng.sample(range(len(items)), max_items))]
    return items, refused


def load_sanity(spec: EvalSpec, data_dir: Path) -> tuple[list[EvalItem], int]:
    """The fixed sanity items whose document is not a training document."""
    if spec.sanity is None:
        return [], 0
    path = Path(spec.sanity)
    train_docs = training_documents(data_dir)
    items, refused = [], 0
    for n, row in enumerate(read_jsonl(path)):
        if row["doc_id"] in train_docs:
            refused += 1
            continue
        items.append(
            EvalItem(
                id=f"sanity:{n}",
                doc_id=row["doc_id"],
                task="sanity",
                builder="sanity",
                kind="choice",
                prompt=[{"role": "user", "content": row["question"]}],
                reference=row["answer"],
                choices=tuple(row["choices"]),
                label=row["answer"],
            )
        )
    return items, refused


def load_recall(spec: EvalSpec, data_dir: Path, builder_options: dict) -> list[EvalItem]:
    """The recall items: each distinct fact (document, category → Yes/No) that the first listed
    builder with training pairs taught (a reading pair's clause label is the same fact as a
    closed-book one), asked once in a seeded held-out wording; as many Yes as No, up to
    ``recall.max_items``. A wording that equals any training question is never used.
    ``builder_options``: the enabled builders' options, by name (for the taxonomy and noun)."""
    recall = spec.recall
    if recall is None:
        return []
    from lexlora.data.builders.knowledge import LABEL, PRESENCE, presence_phrase
    from lexlora.data.taxonomy import load_taxonomy

    facts_by_builder: dict[str, dict[tuple[str, str, str], str]] = {}
    trained: set[str] = set()
    for row in read_jsonl(data_dir / "train.jsonl"):
        meta = row["meta"]
        trained.add(next(m["content"] for m in row["messages"] if m["role"] == "user"))
        if meta["builder"] in builder_options and meta.get("label") in ("Yes", "No"):
            task = LABEL if meta["task"] == LABEL else PRESENCE
            key = (meta["doc_id"], task, meta["category"])
            facts_by_builder.setdefault(meta["builder"], {})[key] = meta["label"]
    source = next((b for b in recall.builders if facts_by_builder.get(b)), None)
    if source is None:
        return []
    facts = facts_by_builder[source]
    titles = {d["id"]: d["title"] for d in read_jsonl(data_dir / "documents.jsonl")}
    options = builder_options[source]
    taxonomy = load_taxonomy(options["taxonomy"]) if options.get("taxonomy") else None
    noun = options.get("label_noun") or "category"
    rng = random.Random("recall")
    by_label: dict[str, list[tuple[str, str, str]]] = {"Yes": [], "No": []}
    for key in sorted(facts):
        by_label[facts[key]].append(key)
    k = min(len(by_label["Yes"]), len(by_label["No"]), recall.max_items // 2)
    chosen = sorted((key, label) for label, keys in by_label.items() for key in rng.sample(keys, k))
    items = []
    for n, ((doc_id, task, category), label) in enumerate(chosen):
        title = titles[doc_id]
        if task == PRESENCE and taxonomy is not None and recall.presence:
            absent = presence_phrase(taxonomy, category)
            wordings = [t.format(title=title, absent=absent) for t in recall.presence]
        elif task == LABEL and recall.label:
            wordings = [t.format(title=title, value=category, noun=noun) for t in recall.label]
        else:
            continue
        wordings = [
            f"{w} {recall.suffix}" for w in wordings if f"{w} {recall.suffix}" not in trained
        ]
        if not wordings:
            continue
        items.append(
            EvalItem(
                id=f"recall:{n}",
                doc_id=doc_id,
                task="recall",
                builder="recall",
                kind="choice",
                prompt=[{"role": "user", "content": rng.choice(wordings)}],
                reference=label,
                choices=("Yes", "No"),
                label=label,
                category=category if task == PRESENCE else f"{noun}: {category}",
            )
        )
    return items


def _item(item_id: str, row: dict, kind: str) -> EvalItem:
    messages = row["messages"]
    meta = row["meta"]
    choices = tuple(meta.get("choices") or ())
    if kind == "choice" and not choices:
        raise LexloraError(
            f"task '{meta['task']}' is defined as choice but its pairs have no options"
        )
    return EvalItem(
        id=item_id,
        doc_id=meta["doc_id"],
        task=meta["task"],
        builder=meta["builder"],
        kind=kind,
        prompt=messages[:-1],
        reference=messages[-1]["content"],
        choices=choices,
        label=meta.get("label"),
        category=meta.get("category"),
    )
