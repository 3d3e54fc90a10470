"""``clause_presence``: taxonomy-driven yes/no pairs with evidence, negation, balance and gold."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import yaml
from support import folder_recipe, write_contract_folder

from lexlora.corpora.licenses import read_license_documents
from lexlora.data.build import build_dataset
from lexlora.data.clause_detect import detect
from lexlora.data.clean import flatten
from lexlora.data.gold import load_gold, score_detector
from lexlora.data.segment import split_clauses
from lexlora.errors import LexloraError
from lexlora.recipe import REPO_ROOT
from lexlora.taxonomy import load_taxonomy

SUBLICENSE = {
    "id": "sublicensing",
    "question": "Does {title} permit sublicensing?",
    "absent": "permits sublicensing",
    "definition": "A right to sublicense.",
    "patterns": [r"\bsub-?licen[cs](?:e|es|ed|ing|able)\b"],
    "negation": "no",
}
COMMERCIAL = {
    "id": "commercial_use_restricted",
    "question": "Does {title} restrict commercial use?",
    "absent": "restricts commercial use",
    "definition": "Non-commercial only.",
    "patterns": [r"\bnon-?commercial\b"],
    "weak": [r"\bcommercial\b"],
    "exclude": [r"\bcommercial or non-?commercial\b"],
    "negation": "ignore",
}


def taxonomy(tmp_path: Path, *categories: dict):
    path = tmp_path / "tax.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "categories": list(categories)}))
    return load_taxonomy(str(path))


def label(text: str, category) -> str:
    return detect(text, split_clauses(text), category).label


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # a grant, "without limitation" and a parenthetical negate nothing
        (
            "Permission is hereby granted to deal in the Software without restriction, including "
            "without limitation the rights to use, copy, modify, sublicense, and/or sell copies.",
            "yes",
        ),
        ("The licensee may sublicense (except as stated below) the Software to affiliates.", "yes"),
        # explicit denials: "may not", "without the right to", "non-", "is not permitted"
        ("You may not copy, modify, sublicense, or distribute the Program.", "no"),
        ("A limited licence, without the right to sublicense, to use the SDK.", "no"),
        ("Google grants a non-exclusive, non-sublicensable licence to use the Services.", "no"),
        ("Sublicensing of the Software is not permitted.", "no"),
        ("Except as expressly provided, no right to sublicense is granted.", "no"),
        # a grant and a denial in one document: ambiguous, dropped
        (
            "You may not sublicense the Logo. You may sublicense the Software to customers.",
            "ambiguous",
        ),
        # the scope of a negation ends at ";" and "but"
        ("You may not sell the Software; you may sublicense it to customers.", "yes"),
        ("The licence is not exclusive, but you may sublicense it.", "yes"),
        ("The Software is provided as is.", "no"),
        # "without restriction", "with or without", "no-charge" negate nothing
        ("Use the Software without restriction and sublicense it free of charge.", "yes"),
        ("With or without modification, you may sublicense the Software.", "yes"),
        ("A no-charge, royalty-free licence to sublicense the Work.", "yes"),
    ],
)
def test_negation_and_scope(tmp_path, text, expected):
    tax = taxonomy(tmp_path, SUBLICENSE)
    assert label(text, tax.categories[0]) == expected


def test_exclusions_weak_matches_and_ignored_negation(tmp_path):
    cat = taxonomy(tmp_path, COMMERCIAL).categories[0]
    # an excluded phrase is neither a match nor a weak mention
    assert label("Use it for any purpose, commercial or non-commercial.", cat) == "no"
    assert label("Commercial support is available.", cat) == "ambiguous"  # weak only
    assert label("For non-commercial use only.", cat) == "yes"
    # the clause is negative by nature: its negation does not flip it
    assert label("You may not use it except for non-commercial research.", cat) == "yes"
    assert label("Use it for any purpose.", cat) == "no"
    # patterns match across line wraps
    assert label("This licence is for\nnon-commercial\n   use.", cat) == "yes"


def test_taxonomy_errors_are_one_line_and_name_the_field(tmp_path):
    bad_regex = {**SUBLICENSE, "patterns": ["(unclosed"]}
    with pytest.raises(LexloraError, match=r"tax\.yaml: categories\.0\.patterns\.0: invalid regex"):
        taxonomy(tmp_path, bad_regex)
    with pytest.raises(LexloraError, match=r"field 'categories\.0\.question': .*\{title\}"):
        taxonomy(tmp_path, {**SUBLICENSE, "question": "Does it permit sublicensing?"})
    with pytest.raises(LexloraError, match=r"field 'categories\.0\.negation'"):
        taxonomy(tmp_path, {**SUBLICENSE, "negation": False})  # YAML's bare `no`
    with pytest.raises(LexloraError, match="duplicate category 'sublicensing'"):
        taxonomy(tmp_path, SUBLICENSE, SUBLICENSE)
    with pytest.raises(LexloraError, match="taxonomy not found"):
        load_taxonomy("no_such_taxonomy")


def test_shipped_taxonomies_load():
    assert len(load_taxonomy("licenses").categories) == 12
    assert len(load_taxonomy("commercial_contracts").categories) >= 15


def presence_recipe(tmp: Path, out: str, **builder):
    folder = tmp / "contracts"
    if not folder.exists():
        write_contract_folder(folder, n_docs=30)
    cfg = {
        "balance": True,
        "max_per_document": 20,
        "options": {"taxonomy": "commercial_contracts"},
        **builder,
    }
    return folder_recipe(
        folder,
        tmp / out,
        builders={"clause_presence": cfg},
        split={"validation": 0.2, "test": 0.2, "stratify_by": "category", "seed": 3},
    )


def read_pairs(folder: Path) -> list[dict]:
    return [
        json.loads(line)
        for split in ("train", "validation", "test")
        for line in (folder / f"{split}.jsonl").read_text().splitlines()
    ]


def test_builder_yes_with_evidence_no_with_statement_balanced(tmp_path):
    gold = tmp_path / "gold.jsonl"
    rows = [
        {"doc_id": f"folder:leases/contract_{i:02d}.txt", "category": "insurance", "label": lab}
        for i, lab in ((1, "yes"), (4, "no"), (7, "yes"))
    ]
    gold.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = presence_recipe(
        tmp_path, "out", options={"taxonomy": "commercial_contracts", "gold": [str(gold)]}
    )
    manifest = build_dataset(recipe)
    out = recipe.dataset_dir
    docs = {d["id"]: d for d in map(json.loads, (out / "documents.jsonl").read_text().splitlines())}
    pairs = read_pairs(out)
    assert pairs and all(p["meta"]["builder"] == "clause_presence" for p in pairs)
    per_split: dict[tuple, Counter] = {}
    for p in pairs:
        meta, answer = p["meta"], p["messages"][-1]["content"]
        doc = docs[meta["doc_id"]]
        assert meta["choices"] == ["Yes", "No"] and meta["task"] == "clause_presence"
        assert answer.split(".")[0] == meta["label"]  # the first word is the label, exactly
        per_split.setdefault((doc["split"], meta["category"]), Counter())[meta["label"]] += 1
        source = flatten(doc["text"][meta["span"][0] : meta["span"][1]])
        if meta["label"] == "Yes":
            quote = answer.split('says: "', 1)[1].rstrip('"')
            assert quote.strip("…") in source  # the evidence is the document's own words
            assert quote.strip("…") in p["messages"][-2]["content"]  # and shown in the question
        else:
            assert "has no clause that" in answer
    # balanced: within each split and category as many Yes as No
    assert all(len(set(c.values())) == 1 for c in per_split.values()), per_split
    assert sum(manifest.pairs.dropped_to_balance.values()) > 0
    cp = manifest.clause_presence
    assert cp.taxonomy == "commercial_contracts"
    # the fixture's contracts draw 7 of 11 clauses: every category is seen, some both ways
    ins = cp.detected["insurance"]
    assert ins["yes"] > 0 and ins["no"] > 0
    assert cp.ambiguous_dropped == sum(c["ambiguous_dropped"] for c in cp.detected.values())
    # the gold labels are scored against what the detector said of those documents
    text = {i: docs[f"folder:leases/contract_{i:02d}.txt"]["text"] for i in (1, 4, 7)}
    said = {i: "insurance" in text[i].lower() for i in (1, 4, 7)}
    g = cp.gold["gold.jsonl"]
    assert g["n"] == 3 and g["gold_yes"] == 2
    assert g["tp"] == said[1] + said[7] and g["fp"] == said[4]


def test_builder_option_errors(tmp_path):
    for options, message in (
        ({}, r"options: missing required option 'taxonomy'"),
        ({"taxonomy": "commercial_contracts", "categories": ["nope"]}, "unknown category 'nope'"),
        ({"taxonomy": "commercial_contracts", "gold": "missing.jsonl"}, "gold label file"),
        (
            {"taxonomy": "commercial_contracts", "context_chars": 5},
            r"option 'context_chars': input should be greater than or equal to 40",
        ),
    ):
        recipe = presence_recipe(tmp_path, "out", options=options)
        with pytest.raises(LexloraError, match=message) as err:
            build_dataset(recipe)
        assert "\n" not in str(err.value)
        assert not (tmp_path / "out").exists()


def test_gold_scoring():
    gold = {("a", "x"): "yes", ("b", "x"): "yes", ("c", "x"): "no", ("d", "x"): "no"}
    detected = {("a", "x"): "yes", ("b", "x"): "ambiguous", ("c", "x"): "yes"}
    s = score_detector(gold, detected)
    assert (s["tp"], s["fp"], s["fn"], s["tn"], s["abstained"]) == (1, 1, 0, 0, 1)
    assert s["precision"] == 0.5 and s["recall"] == 0.5  # the abstention is a miss
    assert s["not_seen"] == 1 and s["n"] == 3


def test_licence_detector_on_held_out_gold():
    """The shipped licence detector against labels written by reading the documents, on the
    held-out gold set that was never used to write its patterns."""
    _, gold = load_gold("eval/gold/licenses_clause_presence_test.jsonl")
    assert len(gold) >= 100
    docs = {d.id: d.text for d in read_license_documents() if d.id in {k[0] for k in gold}}
    assert len(docs) == len({k[0] for k in gold})
    tax = load_taxonomy("licenses")
    detected = {}
    for doc_id, text in docs.items():
        clauses = split_clauses(text)
        for cat in tax.categories:
            detected[(doc_id, cat.id)] = detect(text, clauses, cat).label
    s = score_detector(gold, detected)
    assert s["precision"] >= 0.9 and s["recall"] >= 0.6, s
    assert s["no_precision"] >= 0.9 and s["abstain_rate"] <= 0.2, s


def test_gold_files_are_well_formed():
    for path in sorted((REPO_ROOT / "eval" / "gold").glob("*.jsonl")):
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        tax = {c.id for c in load_taxonomy("licenses").categories}
        for row in rows:
            assert row["label"] in ("yes", "no") and row["category"] in tax
            assert (row["evidence"] is None) == (row["label"] == "no"), row
