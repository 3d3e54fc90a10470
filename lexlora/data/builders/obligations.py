"""``obligations``: sentences with shall/must/may/may not become two kinds of pairs.

- ``obligation``: "Under X, what must the Licensee do …?" → the sentence (quoted from the document);
- ``modality``: "Is this clause an obligation, a permission or a prohibition?" → the label.
"""

from __future__ import annotations

import re

from lexlora.artifacts.pairs import Pair, make_pair
from lexlora.data.builders.base import BuildContext, DocumentView, clause_excerpt, pick
from lexlora.data.clean import flatten
from lexlora.recipe import BuilderConfig

NAME = "obligations"
MODALITIES = ("obligation", "permission", "prohibition")
_PROHIBITION = re.compile(
    r"\b(shall not|must not|may not|will not|cannot|can not|shall in no event|"
    r"is not permitted|are not permitted|is prohibited|are prohibited|(?:shall|must) never|"
    r"no (?:\w+ ){1,4}(?:is|are|shall be|will be) (?:granted|permitted|allowed))\b",
    re.IGNORECASE,
)
_OBLIGATION = re.compile(r"\b(shall|must|is required to|are required to|agrees? to)\b", re.I)
_PERMISSION = re.compile(
    r"\b(may|is permitted to|are permitted to|is free to|are free to|is granted|are granted)\b",
    re.IGNORECASE,
)
_PARTY = re.compile(
    r"\b(Licensee|Licensor|Licensees|Recipient|Contributor|Distributor|Customer|Supplier|"
    r"Company|Client|Provider|User|You|you)\b"
)
_QUESTIONS = {
    "obligation": "Under {title}, what must {party} do{topic}?",
    "permission": "Under {title}, what is {party} allowed to do{topic}?",
    "prohibition": "Under {title}, what is {party} not allowed to do{topic}?",
}
MIN_WORDS, MAX_WORDS = 8, 90


def classify_modality(sentence: str) -> str | None:
    """Prohibition beats obligation beats permission; None when no modal verb is present."""
    if _PROHIBITION.search(sentence):
        return "prohibition"
    if _OBLIGATION.search(sentence):
        return "obligation"
    if _PERMISSION.search(sentence):
        return "permission"
    return None


def build(view: DocumentView, cfg: BuilderConfig, ctx: BuildContext) -> list[Pair]:
    rng = ctx.rng(view.doc.id, NAME)
    candidates = []
    for start, end in view.clauses:
        sentence = flatten(view.text[start:end])
        if not MIN_WORDS <= len(sentence.split()) <= MAX_WORDS:
            continue
        modality = classify_modality(sentence)
        if modality is not None:
            candidates.append((start, end, modality))
    pairs = []
    for start, end, modality in pick(rng, candidates, cfg.max_per_document):
        answer, span = clause_excerpt(view.text, [(start, end)], cfg.max_answer_chars)
        party = _PARTY.search(answer)
        if party and rng.random() < 0.5:
            pairs.append(_quote_pair(view, ctx, answer, span, modality, party.group(1)))
        else:
            pairs.append(_modality_pair(view, ctx, answer, span, modality))
    return pairs


def _quote_pair(view, ctx, answer, span, modality, party: str) -> Pair:
    """Only for sentences that name a party: the question asks what that party must/may do."""
    party = "you" if party.lower() == "you" else f"the {party}"
    heading = _enclosing_heading(view, span[0])
    topic = f' under "{heading}"' if heading else ""
    question = _QUESTIONS[modality].format(title=view.doc.title, party=party, topic=topic)
    return make_pair(
        ctx.system_prompt,
        question,
        answer,
        doc_id=view.doc.id,
        builder=NAME,
        span=span,
        task="obligation",
        label=modality,
    )


def _modality_pair(view, ctx, answer, span, modality) -> Pair:
    question = (
        f"Is the following clause from {view.doc.title} an obligation, a permission or a "
        f'prohibition?\n\n"{answer}"'
    )
    return make_pair(
        ctx.system_prompt,
        question,
        modality.capitalize() + ".",
        doc_id=view.doc.id,
        builder=NAME,
        span=span,
        task="modality",
        choices=[m.capitalize() + "." for m in MODALITIES],
        label=modality.capitalize() + ".",
    )


def _enclosing_heading(view: DocumentView, offset: int) -> str | None:
    """The heading of the innermost titled section containing ``offset``."""
    best = None
    for section in view.sections:
        inside = section.heading and section.start <= offset < section.end
        if inside and (best is None or section.level >= best.level):
            best = section
    return best.heading if best else None
