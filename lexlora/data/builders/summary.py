"""``summary``: summarisation-style pairs grounded in the document's structure and metadata.

- ``document_card``: the opening of a document → a one-sentence description written from its
  metadata (``options.card``, a format string over metadata fields and ``title``; documents missing
  a field get no card);
- ``heading``: a section's body → a short heading for it (the document's own heading).
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

NAME = "summary"


class SummaryOptions(BuilderOptions):
    card: str = Field("This document is titled {title}.", description="{field}s of the metadata.")
    headings: bool = True


def build(view: DocumentView, cfg: BuilderConfig, ctx: BuildContext) -> list[Pair]:
    opts = options(cfg, NAME, SummaryOptions)
    rng = ctx.rng(view.doc.id, NAME)
    pairs = []
    card = _card(opts["card"], view)
    excerpt, span = view.excerpt(cfg.max_answer_chars)
    if card and excerpt:
        question = f'Describe in one sentence the document that begins:\n\n"{excerpt}"'
        pairs.append(
            make_pair(
                ctx.system_prompt,
                question,
                card,
                doc_id=view.doc.id,
                builder=NAME,
                span=span,
                task="document_card",
            )
        )
    if opts["headings"]:
        titled = [s for s in view.sections if s.heading and s.end - s.body_start >= 80]
        for section in pick(rng, titled, cfg.max_per_document - len(pairs)):
            clauses = split_clauses(view.text, section.body_start, section.end)
            body, body_span = clause_excerpt(view.text, clauses, cfg.max_answer_chars)
            if not body:
                continue
            pairs.append(
                make_pair(
                    ctx.system_prompt,
                    f'Write a short heading for this clause of {view.doc.title}:\n\n"{body}"',
                    section.heading,
                    doc_id=view.doc.id,
                    builder=NAME,
                    span=(section.start, body_span[1]),
                    task="heading_summary",
                )
            )
    return pairs


def _card(template: str, view: DocumentView) -> str | None:
    fields = {"title": view.doc.title, **view.doc.metadata}
    try:
        return " ".join(template.format(**fields).split())
    except (KeyError, IndexError):
        return None
