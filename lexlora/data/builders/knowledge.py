"""``knowledge``: closed-book yes/no questions about a *named* training document.

Reading pairs (``clause_presence``) show the document; these do not. They teach what each training
document says, so that an adapter can answer "Does the Foo Licence restrict commercial use?" about
a document it was trained on when the text is not in the prompt. A fact is restated in several
wordings (``paraphrases``), since a fact fine-tuned in one form is rarely retrievable in another
(Allen-Zhu & Li, "Physics of Language Models 3.1").

Facts per training document (documents of other splits get no pairs: a closed-book question about
an unseen document has no answer; ``fraction`` < 1 covers a seeded share of the training documents,
so that a short run sees each of their facts several times):

- ``knowledge_presence``: per category of the taxonomy (``options.taxonomy``), the detector's
  yes/no label (ambiguous ones are skipped) — "Yes. T has a clause that …" / "No. T has no clause
  that …";
- ``knowledge_label`` (with ``options.label_field``, e.g. ``category``): the document's own
  metadata label, asked as "is T classified as X?" for its value (Yes) and for another value of
  the corpus (No).

Options: ``paraphrases`` (wordings per fact, of the templates below), ``fraction`` (share of the
training documents covered), ``facts_per_document`` (a seeded choice of each document's facts;
default all), ``without_system_prompt`` (share of pairs asked without the recipe's system prompt,
as a user of the served endpoint would ask).

Answers open with the verdict, so evaluation scores the first word. ``meta.category`` is what the
question is about (the taxonomy category, or the label value asked), ``meta.label`` Yes or No; set
``balance: true`` to keep Yes and No equal per category. The evaluation's *recall* track asks the
same facts with wordings that no template here uses (``eval/RECIPE.yaml``, ``recall``).
"""

from __future__ import annotations

import hashlib
from typing import Any

from pydantic import Field, model_validator

from lexlora.artifacts.pairs import KNOWLEDGE_LABEL, KNOWLEDGE_PRESENCE, Pair, make_pair
from lexlora.data.builders.base import (
    BuildContext,
    BuilderOptions,
    DocumentView,
    pick,
    run_options,
)
from lexlora.recipe import BuilderConfig
from lexlora.taxonomy import check_categories, load_taxonomy

NAME = "knowledge"
CHOICES = ["Yes", "No"]
# Training wordings. The recall track's wordings live in eval/, and a test checks they differ. A
# fact is retrievable in a new wording only when training asked it in many (Allen-Zhu & Li), so
# the question forms, and the instruction that follows them, vary.
PRESENCE_TEMPLATES = (
    "Does {title} have a clause that {absent}?",
    "Is there a provision in {title} that {absent}?",
    "{title}: does it contain any term that {absent}?",
    "From what you know of {title}, does it include a clause that {absent}?",
    "Tell me whether {title} has a clause that {absent}.",
    "Do the terms of {title} include one that {absent}?",
    "Closed-book question about {title}: is there a section that {absent}?",
    "I am reviewing {title}. Does any of its clauses say something that {absent}?",
    "Can you recall whether {title} contains a provision that {absent}?",
    "Regarding {title}, is a clause that {absent} part of it?",
    "Quick check on {title}: any clause in it that {absent}?",
    "In {title}, do we find a term that {absent}?",
)
LABEL_TEMPLATES = (
    "Is {title} classified as {value}?",
    "Is {title} a {value} {noun}?",
    "Does {title} fall under the {noun} {value}?",
    "From what you know of {title}, is its {noun} {value}?",
    "Which {noun} fits {title}: is it {value}?",
    "Would you put {title} in the {noun} {value}?",
    "Closed-book question: is the {noun} of {title} {value}?",
    "Is {value} the right {noun} for {title}?",
)
SUFFIXES = ("Answer Yes or No first.", "Start with Yes or No.", "Yes or no, then explain.")


class KnowledgeOptions(BuilderOptions):
    taxonomy: str | None = Field(None, description="Clause facts from these categories.")
    categories: list[str] | None = None
    label_field: str | None = Field(None, description="Label facts from this metadata field.")
    label_noun: str = "category"
    paraphrases: int = Field(3, ge=1, description="Wordings of each fact.")
    fraction: float = Field(1.0, gt=0, le=1, description="Share of training documents.")
    facts_per_document: int | None = Field(None, ge=1)
    without_system_prompt: float = Field(0.0, ge=0, le=1)

    @model_validator(mode="after")
    def _some_facts(self) -> KnowledgeOptions:
        if self.taxonomy is None and self.label_field is None:
            raise ValueError("set taxonomy (clause facts), label_field, or both")
        return self


def build(view: DocumentView, cfg: BuilderConfig, ctx: BuildContext) -> list[Pair]:
    opts = _options(cfg, ctx)
    if view.split != "train" or not _covered(view.doc.id, ctx.seed, opts["fraction"]):
        return []
    rng = ctx.rng(view.doc.id, NAME)
    title = view.doc.title
    facts: list[tuple[str, str, str, str, tuple[int, int]]] = []  # task, category, label, answer
    taxonomy = opts["_taxonomy"]
    for category in taxonomy.categories if taxonomy else ():
        if opts["categories"] and category.id not in opts["categories"]:
            continue
        detection = view.detection(taxonomy.name, category)
        absent = category.spec.absent
        if detection.label == "yes":
            assert detection.evidence is not None
            answer = f"Yes. {title} has a clause that {absent}."
            facts.append((KNOWLEDGE_PRESENCE, category.id, "Yes", answer, detection.evidence))
        elif detection.label == "no":
            answer = f"No. {title} has no clause that {absent}."
            facts.append((KNOWLEDGE_PRESENCE, category.id, "No", answer, (0, len(view.text))))
    field = opts["label_field"]
    value = view.doc.metadata.get(field) if field else None
    others = [v for v in ctx.label_values.get(field or "", []) if v != value]
    if isinstance(value, str) and others:
        other = rng.choice(others)
        span = (0, len(view.text))
        facts.append(
            (KNOWLEDGE_LABEL, value, "Yes", f"Yes. {title} is classified as {value}.", span)
        )
        no = f"No. {title} is classified as {value}, not {other}."
        facts.append((KNOWLEDGE_LABEL, other, "No", no, span))
    if opts["facts_per_document"] is not None:
        facts = pick(rng, facts, opts["facts_per_document"])
    pairs = []
    for task, category, label, answer, span in facts:
        templates = PRESENCE_TEMPLATES if task == KNOWLEDGE_PRESENCE else LABEL_TEMPLATES
        for template in rng.sample(templates, min(opts["paraphrases"], len(templates))):
            question = _ask(template, title, taxonomy, category, task, opts)
            system = None if rng.random() < opts["without_system_prompt"] else ctx.system_prompt
            pairs.append(
                make_pair(
                    system,
                    f"{question} {rng.choice(SUFFIXES)}",
                    answer,
                    doc_id=view.doc.id,
                    builder=NAME,
                    span=span,
                    task=task,
                    choices=CHOICES,
                    label=label,
                    category=category,
                )
            )
    return pick(rng, pairs, cfg.max_per_document)


def _covered(doc_id: str, seed: int, fraction: float) -> bool:
    """Whether the seeded ``fraction`` of training documents that get facts includes ``doc_id``
    (a hash of the id, so the choice does not depend on document order)."""
    if fraction >= 1.0:
        return True
    digest = hashlib.sha256(f"{seed}:{NAME}:{doc_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def _ask(template: str, title: str, taxonomy, category: str, task: str, opts: dict) -> str:
    if task == KNOWLEDGE_PRESENCE:
        return template.format(title=title, absent=taxonomy.absent(category))
    return template.format(title=title, value=category, noun=opts["label_noun"])


def _options(cfg: BuilderConfig, ctx: BuildContext) -> dict[str, Any]:
    """The builder's options, validated once per run (the taxonomy loaded with them)."""
    return run_options(cfg, ctx, NAME, KnowledgeOptions, _prepare)


def _prepare(opts: dict[str, Any], where: str) -> None:
    """Check the options; add what later documents reuse (loaded taxonomy, run counters)."""
    taxonomy = load_taxonomy(opts["taxonomy"]) if opts["taxonomy"] is not None else None
    check_categories(taxonomy, opts["categories"], where)
    opts["_taxonomy"] = taxonomy
