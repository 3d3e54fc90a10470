"""``clause_classification``: which kind of clause or document is this?

Two tasks, both multiple choice with the options in the prompt (so evaluation can score each option
by likelihood):

- ``category``: an excerpt of the document → its metadata label (``options.label_field``, e.g. the
  licence category); the options are every value of that field in the corpus;
- ``heading``: a clause → the heading of the section it sits in, among up to four of the
  document's own headings.
"""

from __future__ import annotations

from pydantic import Field

from lexlora.artifacts.pairs import Pair, make_pair
from lexlora.data.builders.base import (
    BuildContext,
    BuilderOptions,
    DocumentView,
    clause_excerpt,
    options,
    pick,
)
from lexlora.data.segment import split_clauses
from lexlora.recipe import BuilderConfig

NAME = "clause_classification"


class ClassificationOptions(BuilderOptions):
    label_field: str = Field("category", description="The document metadata field to predict.")
    label_noun: str = Field("category", description="What a label is called in the question.")
    headings: bool = True


def build(view: DocumentView, cfg: BuilderConfig, ctx: BuildContext) -> list[Pair]:
    opts = options(cfg, NAME, ClassificationOptions)
    rng = ctx.rng(view.doc.id, NAME)
    pairs = []
    label = view.doc.metadata.get(opts["label_field"])
    choices = ctx.label_values.get(opts["label_field"], [])
    if label is not None and len(choices) > 1:
        excerpt, span = view.excerpt(cfg.max_answer_chars)
        if excerpt:
            question = (
                f"Which {opts['label_noun']} does the document containing this text belong to? "
                f'Answer with one of: {", ".join(choices)}.\n\n"{excerpt}"'
            )
            pairs.append(
                make_pair(
                    ctx.system_prompt,
                    question,
                    f"{label}.",
                    doc_id=view.doc.id,
                    builder=NAME,
                    span=span,
                    task="category",
                    choices=[f"{c}." for c in choices],
                    label=f"{label}.",
                )
            )
    if opts["headings"]:
        pairs.extend(_heading_pairs(view, cfg, ctx, rng, cfg.max_per_document - len(pairs)))
    return pairs


def _heading_pairs(view, cfg, ctx, rng, budget: int) -> list[Pair]:
    titled = [s for s in view.sections if s.heading and s.end - s.body_start >= 40]
    headings = sorted({s.heading for s in titled})
    if len(headings) < 2 or budget <= 0:
        return []
    pairs = []
    for section in pick(rng, titled, budget):
        clauses = split_clauses(view.text, section.body_start, section.end)
        excerpt, span = clause_excerpt(view.text, clauses[:2], cfg.max_answer_chars // 2)
        if not excerpt:
            continue
        others = rng.sample(
            [h for h in headings if h != section.heading], min(3, len(headings) - 1)
        )
        choices = sorted([section.heading, *others])
        question = (
            f"Under which heading of {view.doc.title} does this clause appear? Answer with one "
            f'of: {"; ".join(choices)}.\n\n"{excerpt}"'
        )
        pairs.append(
            make_pair(
                ctx.system_prompt,
                question,
                section.heading,
                doc_id=view.doc.id,
                builder=NAME,
                span=(section.start, span[1]),
                task="heading",
                choices=choices,
                label=section.heading,
            )
        )
    return pairs
