"""``definitions``: "How does the licence define 'Source'?" → the defining sentence."""

from __future__ import annotations

from lexlora.artifacts.pairs import Pair, make_pair
from lexlora.data.builders.base import BuildContext, DocumentView, clause_excerpt, pick
from lexlora.recipe import BuilderConfig

NAME = "definitions"
QUESTIONS = (
    'How does {title} define "{term}"?',
    'What does {title} mean by "{term}"?',
    'In {title}, what is the definition of "{term}"?',
)


def build(view: DocumentView, cfg: BuilderConfig, ctx: BuildContext) -> list[Pair]:
    rng = ctx.rng(view.doc.id, NAME)
    first_by_term = {}
    for definition in view.definitions:
        first_by_term.setdefault(definition.term.lower(), definition)
    pairs = []
    for definition in pick(rng, list(first_by_term.values()), cfg.max_per_document):
        answer, span = clause_excerpt(
            view.text, [(definition.start, definition.end)], cfg.max_answer_chars
        )
        question = rng.choice(QUESTIONS).format(title=view.doc.title, term=definition.term)
        pairs.append(
            make_pair(
                ctx.system_prompt,
                question,
                answer,
                doc_id=view.doc.id,
                builder=NAME,
                span=span,
                task="definition",
            )
        )
    return pairs
