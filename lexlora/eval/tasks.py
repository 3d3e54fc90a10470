"""What to score: the task definitions in ``eval/RECIPE.yaml`` and the held-out items they select.

Each test pair has a ``meta.task`` (definition, category, code_to_description, ...). A task is
scored either as ``choice`` (the options are in the pair: accuracy by log-likelihood of each option)
or ``open`` (answer perplexity on the reference; exact match, token F1 and ROUGE-L of a greedy
generation on a subset). Items whose document is in the training split are refused.

Beside the held-out pairs (the *reading* track), three fixed sets: ``sanity`` (independently
labelled yes/no items about held-out documents), ``recall`` (closed-book questions about training
documents in held-out wordings) and ``general`` (out-of-domain questions shipped in
``eval/general/``, never trained on: a drop there is forgetting).
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from lexlora.artifacts.manifest import DataManifest
from lexlora.artifacts.pairs import KNOWLEDGE_LABEL, KNOWLEDGE_PRESENCE
from lexlora.config_errors import validated
from lexlora.errors import LexloraError
from lexlora.io import read_jsonl
from lexlora.recipe import REPO_ROOT
from lexlora.yaml_files import read_yaml


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
        description="Where the facts come from: the first of these builders that has training "
        "pairs. Yes/No pairs (knowledge, clause_presence) give (document, category, Yes/No); "
        "code pairs (icd_code_to_description, icd_description_to_code) give (document, code, "
        "description).",
    )
    max_items: int = Field(
        240, gt=1, le=100_000, description="Facts asked: half Yes, half No (balanced)."
    )
    wordings_per_fact: int = Field(
        1,
        ge=1,
        le=20,
        description="Held-out wordings each fact is asked in (each wording one item; at most as "
        "many as listed). The interval resamples whole facts, so several wordings of one fact "
        "measure it better without counting it more than once.",
    )
    presence: list[str] = Field(
        default_factory=list, description="Wordings with {title} and {absent}."
    )
    label: list[str] = Field(
        default_factory=list, description="Wordings with {title}, {value} and {noun}."
    )
    code: list[str] = Field(
        default_factory=list,
        description="Wordings with {code} and {description}: Yes with the code's own "
        "description, No with another code's of the same document.",
    )
    suffix: str = "Reply Yes or No first."

    @field_validator("presence", "label", "code")
    @classmethod
    def _placeholders(cls, wordings: list[str], info) -> list[str]:
        required, optional = RECALL_FIELDS[info.field_name]
        for wording in wordings:
            names = {name for _, name, _, _ in string.Formatter().parse(wording) if name}
            if not required <= names <= required | optional:
                expected = ", ".join("{" + n + "}" for n in sorted(required))
                extra = f" (and optionally {', '.join('{' + n + '}' for n in optional)})"
                raise ValueError(
                    f"{wording!r}: expected the placeholders {expected}{extra if optional else ''}"
                )
        return wordings


# a recall wording list → the placeholders it must have, and those it may have
RECALL_FIELDS: dict[str, tuple[set[str], set[str]]] = {
    "presence": ({"title", "absent"}, set()),
    "label": ({"title", "value"}, {"noun"}),
    "code": ({"code", "description"}, set()),
}
CODE_TASKS = ("code_to_description", "description_to_code")  # the ICD code builders' tasks
CODE_CATEGORY = "code ↔ description"


class EvalSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tasks: dict[str, TaskSpec]
    generation_items: int = Field(16, ge=0, description="Open items also scored by generation.")
    max_new_tokens: int = Field(48, gt=0)
    sanity: str | None = Field(None, description="Fixed, independently labelled items (JSONL).")
    recall: RecallSpec | None = None
    general: str | None = Field(
        None, description="Out-of-domain questions (JSONL, see GeneralItem), never trained on."
    )


class AnsweredRow(BaseModel):
    """A question with its options, exactly one of which (``answer``) is correct."""

    model_config = ConfigDict(extra="forbid")
    question: str = Field(min_length=5)
    choices: list[str] = Field(min_length=2, max_length=6)
    answer: str

    @field_validator("choices")
    @classmethod
    def _distinct(cls, choices: list[str]) -> list[str]:
        if any(not c.strip() for c in choices):
            raise ValueError("an option is empty")
        if len({c.strip().lower() for c in choices}) != len(choices):
            raise ValueError("options must be distinct")
        return choices

    @field_validator("answer")
    @classmethod
    def _one_of_the_options(cls, answer: str, info) -> str:
        choices = info.data.get("choices")
        if choices is not None and answer not in choices:
            raise ValueError(f"expected one of the options {choices}")
        return answer


class SanityRow(AnsweredRow):
    """One line of ``eval/sanity/*.jsonl`` (written by ``scripts/make_sanity_sets.py``)."""

    doc_id: str = Field(min_length=1, description="The held-out document the question is about.")
    about: str | None = Field(None, description="The metadata the label comes from.")


GENERAL_TOPICS = ("everyday", "arithmetic", "science", "geography", "language", "common_sense")


class GeneralItem(AnsweredRow):
    """One line of ``eval/general/*.jsonl``: an out-of-domain question, its 3-4 options (the
    correct one, ``answer``, at a varied position) and a short reference answer."""

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    topic: Literal[GENERAL_TOPICS]
    reference: str = Field(min_length=1, description="Short reference answer (answer loss).")

    @field_validator("choices")
    @classmethod
    def _three_or_four(cls, choices: list[str]) -> list[str]:
        if not 3 <= len(choices) <= 4:
            raise ValueError(f"expected 3 or 4 options, found {len(choices)}")
        return choices


Row = TypeVar("Row", bound=BaseModel)


def read_rows(path: Path, model: type[Row], unique: tuple[str, ...] = ()) -> list[Row]:
    """The lines of a JSONL file validated by ``model``. A bad line is a one-line LexloraError
    naming the file, the line and the field; so is a repeated value of a ``unique`` field."""
    if not path.is_file():
        raise LexloraError(f"{path}: file not found")
    rows: list[Row] = []
    seen: dict[tuple[str, str], int] = {}
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = validated(model, line, f"{path}:{lineno}")
            for name in unique:
                key = (name, str(getattr(row, name)).strip().lower())
                if key in seen:
                    raise LexloraError(f"{path}:{lineno}: field '{name}': same as line {seen[key]}")
                seen[key] = lineno
            rows.append(row)
    return rows


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
    group: str | None = None  # items of one group (a recall fact's wordings) are resampled together


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
    raw = read_yaml(path, "evaluation spec")
    spec = validated(EvalSpec, raw, str(path))
    for field in ("sanity", "general"):  # relative to the spec's folder
        if getattr(spec, field) is not None:
            setattr(spec, field, str(path.parent / getattr(spec, field)))
    return spec


def training_documents(data_dir: Path) -> set[str]:
    return DataManifest.read(data_dir).training_documents()


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
    rows = read_rows(path, SanityRow, unique=("question",))
    items = [
        EvalItem(
            id=f"sanity:{n}",
            doc_id=row.doc_id,
            task="sanity",
            builder="sanity",
            kind="choice",
            prompt=[{"role": "user", "content": row.question}],
            reference=row.answer,
            choices=tuple(row.choices),
            label=row.answer,
            category=row.about,
        )
        for n, row in enumerate(rows)
        if row.doc_id not in train_docs
    ]
    return items, len(rows) - len(items)


def load_general(spec: EvalSpec, data_dir: Path) -> tuple[list[EvalItem], list[EvalItem], int]:
    """The general track: each out-of-domain question once as an option item (options listed in
    the prompt, scored by log-likelihood) and once as an open item (the bare question, scored by
    the loss of its reference answer). Returns both lists and how many questions were refused
    because a training prompt contains them (these items must never be trained on)."""
    if spec.general is None:
        return [], [], 0
    rows = read_rows(Path(spec.general), GeneralItem, unique=("id", "question"))
    trained = "\n".join(training_questions(data_dir))
    kept = [row for row in rows if row.question not in trained]
    choice, open_items = [], []
    for row in kept:
        common = {"doc_id": f"general:{row.id}", "task": "general", "builder": "general"}
        options = "; ".join(row.choices)
        choice.append(
            EvalItem(
                id=f"general:{row.id}",
                kind="choice",
                prompt=[
                    {"role": "user", "content": f"{row.question} Answer with one of: {options}."}
                ],
                reference=row.answer,
                choices=tuple(row.choices),
                label=row.answer,
                category=row.topic,
                **common,
            )
        )
        open_items.append(
            EvalItem(
                id=f"general:{row.id}:open",
                kind="open",
                prompt=[{"role": "user", "content": row.question}],
                reference=row.reference,
                category=row.topic,
                **common,
            )
        )
    return choice, open_items, len(rows) - len(kept)


def training_questions(data_dir: Path) -> list[str]:
    """The user message of every training pair (all of a plain-text row)."""
    return [_question(row) for row in read_jsonl(data_dir / "train.jsonl")]


def load_recall(spec: EvalSpec, data_dir: Path, builder_options: dict) -> list[EvalItem]:
    """The recall items: distinct facts that the first listed builder with training pairs taught,
    each asked in ``recall.wordings_per_fact`` seeded held-out wordings (one item each, grouped
    by fact); as many Yes as No facts, up to ``recall.max_items`` facts.
    A wording that equals any training question is never used. Facts are either (document,
    category → Yes/No) of yes/no pairs (a reading pair's clause label is the same fact as a
    closed-book one) or (document, code, description) of the ICD code pairs.
    ``builder_options``: the enabled builders' options, by name (for the taxonomy and noun)."""
    recall = spec.recall
    if recall is None:
        return []
    trained: set[str] = set()
    facts: dict[str, dict[tuple, str]] = {}  # builder → fact → Yes/No (or "" for a code)
    for row in read_jsonl(data_dir / "train.jsonl"):
        meta = row["meta"]
        trained.add(_question(row))
        if meta["builder"] not in builder_options:
            continue
        if meta.get("label") in ("Yes", "No"):
            key = (meta["doc_id"], _yes_no_task(meta["task"]), meta["category"])
            facts.setdefault(meta["builder"], {})[key] = meta["label"]
        elif meta["task"] in CODE_TASKS:
            facts.setdefault(meta["builder"], {})[(meta["doc_id"], *meta["span"])] = ""
    source = next((b for b in recall.builders if facts.get(b)), None)
    if source is None:
        return []
    documents = {d["id"]: d for d in read_jsonl(data_dir / "documents.jsonl")}
    rng = random.Random("recall")
    if all(label == "" for label in facts[source].values()):
        asked = _code_questions(recall, facts[source], documents, rng)
    else:
        asked = _yes_no_questions(recall, facts[source], documents, builder_options[source], rng)
    items = []
    for doc_id, wordings, label, category in asked:
        wordings = [f"{w} {recall.suffix}" for w in wordings]
        wordings = [w for w in wordings if w not in trained]
        if not wordings:
            continue
        k = min(recall.wordings_per_fact, len(wordings))
        for wording in [rng.choice(wordings)] if k == 1 else rng.sample(wordings, k):
            items.append(
                EvalItem(
                    id=f"recall:{len(items)}",
                    doc_id=doc_id,
                    task="recall",
                    builder="recall",
                    kind="choice",
                    prompt=[{"role": "user", "content": wording}],
                    reference=label,
                    choices=("Yes", "No"),
                    label=label,
                    category=category,
                    group=f"{doc_id}|{category}",
                )
            )
    return items


Question = tuple[str, list[str], str, str]  # document, wordings, Yes/No, category


def _yes_no_questions(
    recall: RecallSpec, facts: dict, documents: dict, options: dict, rng: random.Random
) -> list[Question]:
    """Presence and label facts: k Yes and k No facts, each in every applicable wording."""
    from lexlora.taxonomy import load_taxonomy

    taxonomy = load_taxonomy(options["taxonomy"]) if options.get("taxonomy") else None
    noun = options.get("label_noun") or "category"
    by_label: dict[str, list[tuple[str, str, str]]] = {"Yes": [], "No": []}
    for key in sorted(facts):
        by_label[facts[key]].append(key)
    k = min(len(by_label["Yes"]), len(by_label["No"]), recall.max_items // 2)
    chosen = sorted((key, label) for label, keys in by_label.items() for key in rng.sample(keys, k))
    asked = []
    for (doc_id, task, category), label in chosen:
        title = documents[doc_id]["title"]
        if task == KNOWLEDGE_PRESENCE and taxonomy is not None and recall.presence:
            absent = taxonomy.absent(category)
            wordings = [t.format(title=title, absent=absent) for t in recall.presence]
            asked.append((doc_id, wordings, label, category))
        elif task == KNOWLEDGE_LABEL and recall.label:
            wordings = [t.format(title=title, value=category, noun=noun) for t in recall.label]
            asked.append((doc_id, wordings, label, f"{noun}: {category}"))
    return asked


def _code_questions(
    recall: RecallSpec, facts: dict, documents: dict, rng: random.Random
) -> list[Question]:
    """Code facts (the code line a training pair was made from): half asked with the code's own
    description (Yes), half with another code's description from the same document (No; never
    one that equals or extends the code's own)."""
    from lexlora.corpora.icd10cm import CODE_LINE_RE

    if not recall.code:
        return []
    codes: dict[str, list[tuple[str, str]]] = {}  # document → its (code, description) lines
    taught: dict[str, tuple[str, str, str]] = {}  # code → (document, code, description)
    for doc_id, start, end in sorted(facts):
        text = documents[doc_id]["text"]
        if doc_id not in codes:
            lines = (CODE_LINE_RE.match(line) for line in text.split("\n"))
            codes[doc_id] = [(m[2], m[3].strip()) for m in lines if m]
        line = CODE_LINE_RE.match(text[start:end])
        if line:
            taught.setdefault(line[2], (doc_id, line[2], line[3].strip()))

    def distractors(doc_id: str, desc: str) -> list[str]:
        own = desc.lower()
        return sorted(
            {
                d
                for _, d in codes[doc_id]
                if not (own.startswith(d.lower()) or d.lower().startswith(own))
            }
        )

    eligible = [fact for _, fact in sorted(taught.items()) if distractors(fact[0], fact[2])]
    k = min(len(eligible) // 2, recall.max_items // 2)
    chosen = rng.sample(eligible, 2 * k)
    asked = []
    for n, (doc_id, code, desc) in enumerate(chosen):
        label = "Yes" if n < k else "No"
        shown = desc if label == "Yes" else rng.choice(distractors(doc_id, desc))
        wordings = [t.format(code=code, description=shown) for t in recall.code]
        asked.append((doc_id, wordings, label, CODE_CATEGORY))
    return sorted(asked, key=lambda q: (q[0], q[1][0]))


def _yes_no_task(task: str) -> str:
    """A yes/no pair's fact kind: a metadata label, or the presence of a clause."""
    return KNOWLEDGE_LABEL if task == KNOWLEDGE_LABEL else KNOWLEDGE_PRESENCE


def _question(row: dict) -> str:
    """What a training row prompts with: its user message, or all of a plain-text row."""
    if row.get("text") is not None:
        return row["text"]
    return next((m["content"] for m in row.get("messages") or () if m["role"] == "user"), "")


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
