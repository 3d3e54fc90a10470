"""`lexlora data`: documents → scrubbed, split, provenance-carrying pairs, deterministically."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support import folder_recipe

from lexlora.data.build import build_dataset
from lexlora.data.clean import flatten
from lexlora.errors import LexloraError
from lexlora.recipe import load_recipe

OUTPUTS = ("train.jsonl", "validation.jsonl", "test.jsonl", "documents.jsonl", "manifest.json")


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_pairs_carry_exact_provenance_and_no_document_crosses_splits(contract_folder, tmp_path):
    recipe = folder_recipe(contract_folder, tmp_path / "data")
    manifest = build_dataset(recipe)
    out = tmp_path / "data" / "contracts"
    docs = {d["id"]: d for d in read_rows(out / "documents.jsonl")}
    seen_split: dict[str, str] = {}
    n_pairs = 0
    for split in ("train", "validation", "test"):
        for row in read_rows(out / f"{split}.jsonl"):
            n_pairs += 1
            meta = row["meta"]
            doc = docs[meta["doc_id"]]
            assert doc["split"] == split
            assert seen_split.setdefault(meta["doc_id"], split) == split
            start, end = meta["span"]
            assert 0 <= start < end <= len(doc["text"])
            source = flatten(doc["text"][start:end])
            answer = row["messages"][-1]["content"]
            assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant"]
            if meta["task"] in {"definition", "section", "obligation"}:
                assert answer == source  # extractive answers are exactly the cited text
            if meta["task"] == "heading":
                assert source.startswith(f"{answer}") or answer in source
            if meta["choices"]:
                assert meta["label"] in meta["choices"] and answer == meta["label"]
    assert n_pairs == sum(manifest.pairs.total.values()) > 100
    assert set(manifest.split.documents) == {"train", "validation", "test"}
    assert all(manifest.split.documents[s] >= 2 for s in ("validation", "test"))
    tasks = manifest.pairs.by_task
    assert {"definition", "section", "category", "document_card"} <= set(tasks)


def test_personal_data_never_reaches_the_outputs(contract_folder, tmp_path):
    manifest = build_dataset(folder_recipe(contract_folder, tmp_path / "data"))
    out = tmp_path / "data" / "contracts"
    everything = "".join((out / name).read_text() for name in OUTPUTS[:4])
    assert "@example.com" not in everything
    assert "(555) 201-" not in everything
    assert "Main Street, Springfield" not in everything
    assert "[EMAIL]" in everything
    counts = manifest.scrub.replacements
    assert counts["EMAIL"] == counts["PHONE"] == counts["ADDRESS"] == 18


def test_same_inputs_and_seed_give_byte_identical_files(contract_folder, tmp_path):
    build_dataset(folder_recipe(contract_folder, tmp_path / "a"))
    build_dataset(folder_recipe(contract_folder, tmp_path / "b"))
    for name in OUTPUTS:
        a = (tmp_path / "a" / "contracts" / name).read_bytes()
        b = (tmp_path / "b" / "contracts" / name).read_bytes()
        if name == "manifest.json":  # the output folder is part of the recipe hash
            a, b = (json.loads(x) for x in (a, b))
            for m in (a, b):
                m.pop("recipe_hash"), m.pop("data_hash")
        assert a == b, name


def test_seed_changes_the_split(contract_folder, tmp_path):
    one = build_dataset(folder_recipe(contract_folder, tmp_path / "a"))
    split = {"validation": 0.17, "test": 0.17, "stratify_by": "category", "seed": 2}
    two = build_dataset(folder_recipe(contract_folder, tmp_path / "b", split=split))
    assert one.split.doc_ids != two.split.doc_ids


def test_builder_weight_repeats_or_subsamples_training_pairs(contract_folder, tmp_path):
    base = build_dataset(folder_recipe(contract_folder, tmp_path / "a"))
    builders = {"definitions": {"weight": 2.0}, "obligations": {"weight": 0.5}}
    weighted = build_dataset(folder_recipe(contract_folder, tmp_path / "b", builders=builders))
    b0, b1 = base.pairs.by_builder, weighted.pairs.by_builder
    assert b1["definitions"]["train"] == 2 * b0["definitions"]["train"]
    assert b1["obligations"]["train"] == round(0.5 * b0["obligations"]["train"])
    assert b1["definitions"]["test"] == b0["definitions"]["test"]  # held-out splits untouched


def test_leakage_above_threshold_fails_and_writes_nothing(tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    body = (
        "1. Payment\n\n   The Customer shall pay all fees within thirty days of the invoice "
        "date, without set-off or deduction of any kind whatsoever.\n\n"
    )
    for i in range(12):  # identical clause text in every document: test answers = training text
        (folder / f"c{i}.txt").write_text(f"AGREEMENT {i}\n\n{body}" + f"2. Party\n\n   Party {i}.")
    recipe = folder_recipe(
        folder,
        tmp_path / "data",
        clean={"min_chars": 10, "dedup": False},
        builders={"section_qa": {}},
        leakage={"ngram": 5, "max_overlap": 0.2},
    )
    with pytest.raises(LexloraError, match="leakage check failed"):
        build_dataset(recipe)
    assert not (tmp_path / "data" / "contracts").exists()


def test_bad_documents_are_skipped_and_counted(contract_folder, tmp_path):
    (contract_folder / "empty.txt").write_text("   \n")
    (contract_folder / "scan.pdf").write_bytes(b"%PDF-1.4 not really")
    (contract_folder / "blob.txt").write_bytes(b"\x00\x01\x02binary")
    (contract_folder / "latin.txt").write_bytes("Vertrag über Käufe".encode("latin-1"))
    manifest = build_dataset(folder_recipe(contract_folder, tmp_path / "data"))
    skipped = manifest.documents.skipped
    assert skipped["empty"] == 1 and skipped["binary"] == 1 and skipped["not-utf8"] == 1
    assert skipped["unreadable-pdf"] == 1
    assert manifest.documents.kept == 18
    assert any("latin.txt" in w for w in manifest.documents.warnings)


def test_unknown_builder_and_missing_folder_are_user_errors(contract_folder, tmp_path):
    out = tmp_path / "data"
    with pytest.raises(LexloraError, match=r"unknown builder 'defs'.*definitions"):
        build_dataset(folder_recipe(contract_folder, out, builders={"defs": {}}))
    with pytest.raises(LexloraError, match="not found"):
        build_dataset(folder_recipe(tmp_path / "nowhere", out))
    opts = {"clause_classification": {"options": {"label_fild": "x"}}}
    with pytest.raises(
        LexloraError, match="unknown key 'label_fild' \\(did you mean 'label_field'\\?\\)"
    ):
        build_dataset(folder_recipe(contract_folder, out, builders=opts))


def test_an_output_folder_lexlora_did_not_make_is_never_replaced(contract_folder, tmp_path):
    before = sorted(p.name for p in contract_folder.iterdir())
    # output_dir/RECIPE is the user's own document folder: refused before anything is built
    with pytest.raises(LexloraError, match="contracts exists and was not made by lexlora"):
        build_dataset(folder_recipe(contract_folder, tmp_path))
    assert sorted(p.name for p in contract_folder.iterdir()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["contracts"]


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "lexlora.cli", *args]
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env, timeout=120)


def test_cli_user_errors_are_one_line_exit_2(tmp_path):
    result = run_cli("data", "no_such_recipe", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: unknown recipe 'no_such_recipe'")
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {corpus: licenses}\ntrain: {batchsize: 4}\n")
    result = run_cli("data", str(bad), cwd=tmp_path)
    assert result.returncode == 2 and "did you mean 'batch_size'" in result.stderr
    result = run_cli("data", "legal_contracts", "--set", "data.corpus=contracts", cwd=tmp_path)
    assert result.returncode == 2 and "unknown corpus 'contracts'" in result.stderr


def test_cli_builds_a_folder_recipe(contract_folder, tmp_path):
    recipe = tmp_path / "mine.yaml"
    recipe.write_text(
        f"name: mine\ndata:\n  corpus: folder\n  path: {contract_folder}\n"
        f"  output_dir: {tmp_path / 'data'}\n  clean: {{min_chars: 100}}\n"
        "  builders: {definitions: {}, section_qa: {}}\n  leakage: {max_overlap: 1.0}\n"
    )
    result = run_cli("data", str(recipe), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stdout
    assert (tmp_path / "data" / "mine" / "manifest.json").is_file()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("recipe_name", "min_pairs", "min_docs"),
    [("legal_contracts", 10_000, 1900), ("medical_icd10", 5_000, 290)],
)
def test_real_corpora_give_thousands_of_held_out_pairs(recipe_name, min_pairs, min_docs, tmp_path):
    recipe = load_recipe(recipe_name, [f"data.output_dir={tmp_path}"])
    manifest = build_dataset(recipe, corpora_dir=tmp_path / "corpora")
    ids = manifest.split.doc_ids
    assert not set(ids["train"]) & (set(ids["test"]) | set(ids["validation"]))
    assert not set(ids["test"]) & set(ids["validation"])
    assert manifest.documents.kept >= min_docs
    assert sum(manifest.pairs.total.values()) >= min_pairs
    assert manifest.leakage.passed
    for stratum, counts in manifest.split.by_stratum.items():
        if sum(counts.values()) >= 20:
            assert counts["test"] >= 1, stratum
