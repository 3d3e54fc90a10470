"""Text cleaning and duplicate removal.

``clean_text`` normalises Unicode and whitespace and drops boilerplate lines; ``find_duplicates``
finds exact and near-duplicate documents with MinHash LSH (datasketch).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from datasketch import MinHash, MinHashLSH

from lexlora.io import sha256_text

# Lines that carry no content in real documents: page markers, separators, form feeds.
DEFAULT_BOILERPLATE = (
    r"^\s*page \d+( of \d+)?\s*$",
    r"^\s*-+\s*\d+\s*-+\s*$",
    r"^\s*[-=_*#~]{4,}\s*$",
)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")
_BLANK_RUNS = re.compile(r"\n{3,}")
_WORD = re.compile(r"\w+")


def clean_text(
    text: str, unicode_form: str = "NFKC", boilerplate: Sequence[re.Pattern[str]] = ()
) -> str:
    """Normalise Unicode, drop control characters and boilerplate lines, strip trailing spaces,
    expand tabs, and collapse runs of blank lines to one. Indentation is kept (it is structure)."""
    text = unicodedata.normalize(unicode_form, text)
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\f", "\n\n")
    text = _CONTROL.sub("", text)
    lines = []
    for line in text.split("\n"):
        line = line.expandtabs(4).rstrip()
        if any(p.search(line) for p in boilerplate):
            continue
        lines.append(line)
    return _BLANK_RUNS.sub("\n\n", "\n".join(lines)).strip("\n")


def compile_boilerplate(patterns: Sequence[str]) -> list[re.Pattern[str]]:
    return [re.compile(p, re.IGNORECASE) for p in (*DEFAULT_BOILERPLATE, *patterns)]


@dataclass(frozen=True)
class Duplicate:
    doc_id: str
    duplicate_of: str
    kind: str  # "exact" or "near"


def find_duplicates(
    docs: Sequence[tuple[str, str]],
    threshold: float = 0.9,
    num_perm: int = 128,
    shingle_words: int = 5,
) -> list[Duplicate]:
    """Duplicates among ``(doc_id, text)`` pairs; the first occurrence in the given order is kept.

    Exact duplicates compare whitespace- and case-insensitive text; near duplicates have an
    estimated Jaccard similarity of word shingles ≥ ``threshold``.
    """
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    seen_exact: dict[str, str] = {}
    duplicates = []
    for doc_id, text in docs:
        words = [w.lower() for w in _WORD.findall(text)]
        digest = sha256_text(" ".join(words))
        if digest in seen_exact:
            duplicates.append(Duplicate(doc_id, seen_exact[digest], "exact"))
            continue
        seen_exact[digest] = doc_id
        signature = _minhash(words, num_perm, shingle_words)
        matches = lsh.query(signature)
        if matches:
            duplicates.append(Duplicate(doc_id, min(matches), "near"))
            continue
        lsh.insert(doc_id, signature)
    return duplicates


def _minhash(words: list[str], num_perm: int, shingle_words: int) -> MinHash:
    n = min(shingle_words, max(len(words), 1))
    shingles = {" ".join(words[i : i + n]).encode() for i in range(max(len(words) - n + 1, 1))}
    signature = MinHash(num_perm=num_perm, seed=1)
    signature.update_batch(sorted(shingles))
    return signature


_SPACES = re.compile(r"\s+")


def flatten(text: str) -> str:
    """Collapse the hard wraps and indentation of plain-text documents into single spaces."""
    return _SPACES.sub(" ", text).strip()
