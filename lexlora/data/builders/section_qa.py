"""``section_qa``: a section's heading → what the section says (its opening clauses)."""

from __future__ import annotations

from collections import Counter

from lexlora.artifacts.pairs import Pair, make_pair
from lexlora.data.builders.base import BuildContext, DocumentView, clause_excerpt, pick
from lexlora.data.segment import split_clauses
from lexlora.recipe import BuilderConfig

NAME = "section_qa"
MIN_BODY_CHARS = 40
QUESTIONS = (
    'What does {title} say in its section "{heading}"?',
    'What does the "{heading}" section of {title} provide?',
    'Under the heading "{heading}", what does {title} state?',
)


def build(view: DocumentView, cfg: BuilderConfig, ctx: BuildContext) -> list[Pair]:
    rng = ctx.rng(view.doc.id, NAME)
    headings = Counter((s.heading or "").lower() for s in view.sections)
    candidates = [
        s
        for s in view.sections
        if s.heading
        and headings[s.heading.lower()] == 1
        and len(view.text[s.body_start : s.end].strip()) >= MIN_BODY_CHARS
    ]
    pairs = []
    for section in pick(rng, candidates, cfg.max_per_document):
        clauses = split_clauses(view.text, section.body_start, section.end)
        answer, span = clause_excerpt(view.text, clauses, cfg.max_answer_chars)
        if not answer:
            continue
        question = rng.choice(QUESTIONS).format(title=view.doc.title, heading=section.heading)
        pairs.append(
            make_pair(
                ctx.system_prompt,
                question,
                answer,
                doc_id=view.doc.id,
                builder=NAME,
                span=span,
                task="section",
            )
        )
    return pairs
