"""Write the fixed sanity sets ``eval/sanity/*.jsonl`` from corpus metadata (run once; committed).

The questions come from the documents' own labels (licence category; ICD-10-CM chapter), phrased
independently of the pair builders, for documents held out by the recipe's default split.

    python scripts/make_sanity_sets.py      # needs data/legal_contracts and data/medical_icd10
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from lexlora.io import write_jsonl

COPYLEFT = {"Copyleft", "Copyleft Limited"}


def test_documents(recipe: str) -> list[dict]:
    lines = Path(f"data/{recipe}/documents.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines]
    return [r for r in rows if r["split"] == "test"]


def licences(n: int = 30) -> list[dict]:
    docs = [
        d
        for d in test_documents("legal_contracts")
        if d["metadata"]["category"] in COPYLEFT | {"Permissive"}
    ]
    rng = random.Random(0)
    yes = [d for d in docs if d["metadata"]["category"] in COPYLEFT]
    no = [d for d in docs if d["metadata"]["category"] == "Permissive"]
    chosen = rng.sample(yes, min(n // 2, len(yes))) + rng.sample(no, min(n // 2, len(no)))
    return [
        {
            "doc_id": d["id"],
            "question": f"Is the {d['title']} a copyleft licence, one that requires modified "
            "versions to be shared under the same terms? Answer Yes or No.",
            "choices": ["Yes", "No"],
            "answer": "Yes" if d["metadata"]["category"] in COPYLEFT else "No",
        }
        for d in sorted(chosen, key=lambda d: d["id"])
    ]


def icd_blocks(n: int = 30) -> list[dict]:
    docs = test_documents("medical_icd10")
    chapters = sorted({d["metadata"]["chapter_title"] for d in docs})
    rng = random.Random(0)
    rows = []
    for i, d in enumerate(sorted(rng.sample(docs, min(n, len(docs))), key=lambda d: d["id"])):
        true_title = d["metadata"]["chapter_title"]
        asked = true_title if i % 2 == 0 else rng.choice([c for c in chapters if c != true_title])
        rows.append(
            {
                "doc_id": d["id"],
                "question": f"In ICD-10-CM, are the codes {d['metadata']['block']} classified "
                f"under the chapter '{asked}'? Answer Yes or No.",
                "choices": ["Yes", "No"],
                "answer": "Yes" if asked == true_title else "No",
            }
        )
    return rows


if __name__ == "__main__":
    write_jsonl("eval/sanity/legal_contracts.jsonl", licences())
    write_jsonl("eval/sanity/medical_icd10.jsonl", icd_blocks())
