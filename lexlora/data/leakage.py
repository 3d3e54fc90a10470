"""How much of the held-out answers the training split already contains (word n-gram overlap)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass

_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class LeakageReport:
    ngram: int
    scored: int  # held-out answers long enough to have an n-gram
    too_short: int  # answers with fewer than ``ngram`` words (labels such as "Permissive.")
    mean_overlap: float  # mean fraction of an answer's n-grams found in the training text
    p90_overlap: float
    fully_contained: int  # answers whose every n-gram occurs in training
    max_overlap: float  # the recipe's threshold
    passed: bool

    def as_dict(self) -> dict:
        return asdict(self)


def word_ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    words = [w.lower() for w in _WORD.findall(text)]
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def measure_leakage(
    train_texts: Iterable[str], heldout_answers: Iterable[str], n: int, max_overlap: float
) -> LeakageReport:
    """Overlap of each held-out answer's word n-grams with all n-grams of the training texts."""
    train: set[tuple[str, ...]] = set()
    for text in train_texts:
        train |= word_ngrams(text, n)
    overlaps, too_short = [], 0
    for answer in heldout_answers:
        grams = word_ngrams(answer, n)
        if not grams:
            too_short += 1
            continue
        overlaps.append(len(grams & train) / len(grams))
    overlaps.sort()
    mean = sum(overlaps) / len(overlaps) if overlaps else 0.0
    p90 = overlaps[int(0.9 * (len(overlaps) - 1))] if overlaps else 0.0
    return LeakageReport(
        ngram=n,
        scored=len(overlaps),
        too_short=too_short,
        mean_overlap=round(mean, 4),
        p90_overlap=round(p90, 4),
        fully_contained=sum(1 for o in overlaps if o >= 1.0),
        max_overlap=max_overlap,
        passed=mean <= max_overlap,
    )
