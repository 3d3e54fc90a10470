"""Does a document contain a clause of a category? Regex detection with negation and scope.

Each category's patterns are searched over the whole document (exclusions masked out first) and
every match is placed in its clause. A match is *negated* when it is prefixed by "non-", when a
negator ("not", "no", "never", "without", "except", ...) stands shortly before it in the same
clause and scope (a ``;``, ``:``, "but", "provided that", "unless" or "however" ends a scope;
parentheticals, "without limitation", "no-charge" and "not limited to" negate nothing), or when a
denial follows it ("is not permitted", "is prohibited"). Then, per the category's ``negation``
setting:

* plain matches only → ``yes``, with the first matching clause as evidence;
* negated matches only → ``no`` (an explicit denial) or ``ambiguous``; ``ignore`` counts them as
  plain matches (for clauses that are negative by nature: "shall not be liable");
* both plain and negated → ``ambiguous``;
* no match but a weak one (the topic is mentioned, not established) → ``ambiguous``;
* nothing → ``no``.

Ambiguous documents are dropped from the pairs and counted, never guessed.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from typing import Literal

from lexlora.taxonomy import Category

Label = Literal["yes", "no", "ambiguous"]

NEGATOR = re.compile(
    r"\b(?:not|no|never|neither|nor|without|cannot|can't|won't|except|excluding|other\s+than"
    r"|nothing|none|in\s+lieu\s+of|instead\s+of)\b(?!-)",
    re.IGNORECASE,
)
# Phrases with a negator that negate nothing ("including without limitation the right to ...").
NOT_NEGATION = re.compile(
    r"\b(?:without\s+(?:limitation|restriction)|with\s+or\s+without|not\s+limited\s+to"
    r"|not\s+only|whether\s+or\s+not|(?:at\s+)?no\s+(?:additional\s+)?(?:charge|cost|fee)"
    r"|no\s+(?:later|more|less|fewer)\s+than|not\s+(?:later|more|less|fewer)\s+than)\b"
    r"|\([^()]*\)",
    re.IGNORECASE,
)
NON_PREFIX = re.compile(r"\bnon-?\s*$", re.IGNORECASE)
SCOPE_BREAK = re.compile(
    r"[;:]|\b(?:but|provided(?:\s+that)?|unless|however|whereas|and\s+you\s+may)\b", re.IGNORECASE
)
DENIAL_AFTER = re.compile(
    r"^[^.;:]{0,30}?\b(?:(?:is|are|shall\s+be|will\s+be|be)\s+(?:not|never)\b|"
    r"(?:is|are|shall\s+be|will\s+be)\s+(?:prohibited|forbidden|excluded)\b)",
    re.IGNORECASE,
)
WINDOW_WORDS = 8
WINDOW_CHARS = 80


@dataclass(frozen=True)
class Match:
    start: int
    end: int
    clause: int
    negated: bool


@dataclass(frozen=True)
class Detection:
    """The label of one category in one document, and the evidence clause for ``yes``."""

    label: Label
    reason: str
    evidence: tuple[int, int] | None = None  # the clause's span
    match: tuple[int, int] | None = None  # the pattern's span inside it


def detect(text: str, clauses: list[tuple[int, int]], category: Category) -> Detection:
    """Label ``category`` for the document ``text`` split into ``clauses`` (spans)."""
    masked = _mask(text, category.exclude)
    matches = _matches(masked, clauses, category.patterns)
    if category.spec.negation == "ignore":
        plain, negated = matches, []
    else:
        plain = [m for m in matches if not m.negated]
        negated = [m for m in matches if m.negated]
    if plain and not negated:
        first = plain[0]
        return Detection("yes", "match", clauses[first.clause], (first.start, first.end))
    if plain and negated:
        return Detection("ambiguous", "plain and negated matches")
    if negated:
        if category.spec.negation == "no":
            return Detection("no", "explicitly denied")
        return Detection("ambiguous", "negated match")
    if any(p.search(masked) for p in category.weak):
        return Detection("ambiguous", "weak match only")
    return Detection("no", "no match")


def _mask(text: str, exclude: tuple[re.Pattern[str], ...]) -> str:
    """``text`` with every exclusion replaced by spaces (offsets unchanged)."""
    for pattern in exclude:
        text = pattern.sub(lambda m: " " * len(m.group(0)), text)
    return text


def _matches(
    text: str, clauses: list[tuple[int, int]], patterns: tuple[re.Pattern[str], ...]
) -> list[Match]:
    starts = [s for s, _ in clauses]
    found: dict[int, Match] = {}
    for pattern in patterns:
        for m in pattern.finditer(text):
            k = bisect.bisect_right(starts, m.start()) - 1
            if k < 0 or m.start() >= clauses[k][1]:
                continue  # between clauses (headings, blank lines): not part of one
            if m.start() not in found:
                found[m.start()] = Match(m.start(), m.end(), k, _negated(text, clauses[k], m))
    return [found[k] for k in sorted(found)]


def _negated(text: str, clause: tuple[int, int], m: re.Match[str]) -> bool:
    """A negator shortly before the match in the same scope, or a denial right after it."""
    before = text[max(clause[0], m.start() - WINDOW_CHARS) : m.start()]
    if NON_PREFIX.search(before):
        return True  # "non-sublicensable"
    before = NOT_NEGATION.sub(" ", before)
    breaks = list(SCOPE_BREAK.finditer(before))
    if breaks:
        before = before[breaks[-1].end() :]
    words = before.split()[-WINDOW_WORDS:]
    if NEGATOR.search(" ".join(words)):
        return True
    return bool(DENIAL_AFTER.search(text[m.end() : min(clause[1], m.end() + 60)]))
