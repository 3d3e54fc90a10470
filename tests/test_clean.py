"""Cleaning and near-duplicate detection."""

import random

from lexlora.data.clean import clean_text, compile_boilerplate, find_duplicates


def test_clean_text_normalises_unicode_whitespace_and_boilerplate():
    raw = (
        "ﬁrst\tline   \r\n"  # ligature (NFKC), tab, trailing spaces, CRLF
        "Page 3 of 10\n"
        "   indented body\x07\n"
        "\n\n\n\n"
        "==========\n"
        "- 4 -\n"
        "last\fpage"
    )
    assert clean_text(raw, boilerplate=compile_boilerplate([])) == (
        "first   line\n   indented body\n\nlast\n\npage"
    )


def test_recipe_boilerplate_patterns_remove_whole_lines():
    pats = compile_boilerplate([r"^CONFIDENTIAL - DO NOT DISTRIBUTE$"])
    text = "Terms\nCONFIDENTIAL - DO NOT DISTRIBUTE\nmore terms"
    assert clean_text(text, boilerplate=pats) == "Terms\nmore terms"


def _doc(rng: random.Random, n: int) -> list[str]:
    vocab = [f"w{i}" for i in range(2000)]
    return [rng.choice(vocab) for _ in range(n)]


def test_exact_and_near_duplicates_found_and_distinct_kept():
    rng = random.Random(0)
    base = _doc(rng, 600)
    near = list(base)
    near[300] = "changed"  # one word in 600 differs
    other = _doc(rng, 600)
    docs = [
        ("a", " ".join(base)),
        ("b", " ".join(w.upper() for w in base)),  # same words, other case and spacing
        ("c", " ".join(near)),
        ("d", " ".join(other)),
    ]
    dups = {d.doc_id: (d.duplicate_of, d.kind) for d in find_duplicates(docs, threshold=0.9)}
    assert dups == {"b": ("a", "exact"), "c": ("a", "near")}


def test_half_shared_documents_are_not_near_duplicates():
    rng = random.Random(1)
    shared = _doc(rng, 300)
    a = " ".join(shared + _doc(rng, 300))
    b = " ".join(shared + _doc(rng, 300))
    assert find_duplicates([("a", a), ("b", b)], threshold=0.9) == []
