"""Split by document (stratified, seeded) and the n-gram leakage measure."""

from collections import Counter

from lexlora.data.leakage import measure_leakage, word_ngrams
from lexlora.data.split import split_by_document


def strata(n_per: dict[str, int]) -> dict[str, str]:
    return {f"{s}-{i}": s for s, n in n_per.items() for i in range(n)}


def test_every_document_in_exactly_one_split_with_requested_fractions():
    docs = strata({"Permissive": 400, "Copyleft": 150, "Commercial": 50})
    split = split_by_document(docs, validation=0.05, test=0.1, seed=42)
    assert set(split) == set(docs)
    sizes = Counter(split.values())
    assert abs(sizes["test"] - 60) <= 2 and abs(sizes["validation"] - 30) <= 2
    # stratified: each stratum gets its share of the test split
    per = Counter((docs[d], s) for d, s in split.items())
    assert abs(per["Permissive", "test"] - 40) <= 1
    assert abs(per["Copyleft", "test"] - 15) <= 1
    assert abs(per["Commercial", "test"] - 5) <= 1


def test_seeded_and_seed_sensitive():
    docs = strata({"a": 50, "b": 50})
    assert split_by_document(docs, 0.1, 0.2, seed=1) == split_by_document(docs, 0.1, 0.2, seed=1)
    assert split_by_document(docs, 0.1, 0.2, seed=1) != split_by_document(docs, 0.1, 0.2, seed=2)


def test_small_strata_keep_a_training_document_and_totals_stay_close():
    docs = strata({f"s{i}": 2 for i in range(30)} | {"single": 1})
    split = split_by_document(docs, validation=0.1, test=0.1, seed=0)
    assert split["single-0"] == "train"
    sizes = Counter(split.values())
    assert 4 <= sizes["test"] <= 8 and 4 <= sizes["validation"] <= 8
    for stratum in {f"s{i}" for i in range(30)}:
        assert "train" in {split[f"{stratum}-{j}"] for j in range(2)}


def test_word_ngrams_case_and_punctuation_insensitive():
    assert word_ngrams("The Licensee shall, at all times;", 3) == {
        ("the", "licensee", "shall"),
        ("licensee", "shall", "at"),
        ("shall", "at", "all"),
        ("at", "all", "times"),
    }


def test_leakage_measures_overlap_and_fails_above_threshold():
    train = ["the licensee shall pay all fees within thirty days of the invoice date"]
    copied = "The Licensee shall pay all fees within thirty days of the invoice date."
    fresh = "Either party may terminate this agreement upon written notice to the other."
    report = measure_leakage(train, [copied, fresh, "Permissive."], n=4, max_overlap=0.4)
    assert report.scored == 2 and report.too_short == 1
    assert report.fully_contained == 1
    assert report.mean_overlap == 0.5
    assert not report.passed
    assert measure_leakage(train, [fresh], n=4, max_overlap=0.4).passed
