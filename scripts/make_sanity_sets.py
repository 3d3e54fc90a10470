"""Write the fixed sanity sets ``eval/sanity/RECIPE.jsonl`` from corpus metadata (deterministic;
the files are committed, rerun only to change them).

Documents: those that the recipe's own split holds out (validation and test), computed the way
``lexlora data RECIPE`` computes it (load → clean → scrub → deduplicate → ``split_by_document``
with the recipe's seed and stratification), so that the evaluation's refusal of training
documents keeps every item. Labels come from the corpus metadata only, never from the project's
clause detectors or pair builders, in wordings that no builder uses:

- legal_contracts (the licensedcode YAML header of each licence): copyleft or permissive
  (``category``), a licence exception or not (``is_exception``), its SPDX identifier
  (``spdx_license_key``), its author or steward (``owner``);
- medical_icd10 (the CDC tabular list): a code's chapter and block (the block document's
  metadata), and whether it is billable (a leaf of the tabular list, 7th characters included,
  as ``simple_icd_10_cm.is_leaf`` says).

Each kind of question (``about``) has as many Yes as No items. The script stops with an error when
a set has fewer than MIN_ITEMS items, is not balanced, or when fewer than MIN_ITEMS would survive
the refusal against an existing ``data/RECIPE/manifest.json``.

    python scripts/make_sanity_sets.py [--corpora-dir corpora] [--recipe legal_contracts ...]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from lexlora.corpora.catalog import load_documents
from lexlora.corpora.document import Document
from lexlora.corpora.icd10cm import CODE_LINE_RE
from lexlora.data import build
from lexlora.io import write_jsonl
from lexlora.recipe import REPO_ROOT, Recipe, load_recipe

MIN_ITEMS = 200
SUFFIX = "Answer Yes or No."
COPYLEFT = {"Copyleft", "Copyleft Limited"}
NO_OWNER = {"unspecified", "unknown", "none"}
# about → how many items of each answer (Yes and No)
LICENCE_QUOTAS = {"copyleft": 45, "is_exception": 30, "spdx_license_key": 40, "owner": 30}
ICD_QUOTAS = {"chapter": 40, "block": 40, "billable": 40}


def held_out_documents(recipe: Recipe, corpora_dir: Path) -> list[Document]:
    """The documents that the recipe's split assigns to validation or test, by id: the same
    steps, options and seeds as ``lexlora.data.build.build_dataset``."""
    cfg = recipe.data
    docs = sorted(load_documents(cfg.corpus, corpora_dir, cfg.path), key=build._doc_key)
    docs = build._limit(docs, cfg.max_documents, cfg.split.seed)
    docs = build.drop_duplicates(build._clean_and_scrub(docs, cfg)[0], cfg)[0]
    split = build.assign_splits(docs, cfg)[1]
    return sorted((d for d in docs if split[d.id] != "train"), key=lambda d: d.id)


def item(doc: Document, about: str, question: str, answer: bool) -> dict:
    return {
        "doc_id": doc.id,
        "about": about,
        "question": f"{question} {SUFFIX}",
        "choices": ["Yes", "No"],
        "answer": "Yes" if answer else "No",
    }


def balanced(rng: random.Random, yes: Sequence, no: Sequence, k: int) -> tuple[list, list]:
    """Up to ``k`` of each, as many Yes as No (seeded)."""
    k = min(k, len(yes), len(no))
    return rng.sample(list(yes), k), rng.sample(list(no), k)


def licence_items(docs: list[Document]) -> list[dict]:
    rng = random.Random("sanity:legal_contracts")
    docs = [d for d in docs if not d.metadata.get("is_deprecated")]
    meta = {d.id: d.metadata for d in docs}
    rows = []
    licences = [d for d in docs if not meta[d.id]["is_exception"]]
    yes, no = balanced(
        rng,
        [d for d in licences if meta[d.id]["category"] in COPYLEFT],
        [d for d in licences if meta[d.id]["category"] == "Permissive"],
        LICENCE_QUOTAS["copyleft"],
    )
    for doc in yes + no:
        question = (
            f"Is the {doc.title} a copyleft licence, one that requires modified versions to be "
            "shared under the same terms?"
        )
        rows.append(item(doc, "copyleft", question, doc in yes))
    yes, no = balanced(
        rng,
        [d for d in docs if meta[d.id]["is_exception"]],
        licences,
        LICENCE_QUOTAS["is_exception"],
    )
    for doc in yes + no:
        question = (
            f"Is the {doc.title} a licence exception, that is, extra permissions attached to "
            "another licence rather than a licence of its own?"
        )
        rows.append(item(doc, "is_exception", question, doc in yes))
    rows += _value_items(
        rng,
        [
            d
            for d in docs
            if not meta[d.id].get("spdx_license_key", "LicenseRef").startswith("LicenseRef")
        ],
        "spdx_license_key",
        lambda doc, key: f"Is {key} the SPDX identifier of the {doc.title}?",
        lambda own, other: own != other,
    )
    rows += _value_items(
        rng,
        [d for d in docs if str(meta[d.id].get("owner", "unknown")).lower() not in NO_OWNER],
        "owner",
        lambda doc, owner: f"Is {owner} the author or steward of the {doc.title}?",
        lambda own, other: not _words(own) & _words(other),
    )
    return rows


def _value_items(
    rng: random.Random,
    docs: list[Document],
    field: str,
    ask: Callable[[Document, str], str],
    differs: Callable[[str, str], bool],
) -> list[dict]:
    """Half the documents asked with their own ``field`` value (Yes), half with the value of
    another document that ``differs`` from theirs (No)."""
    k = LICENCE_QUOTAS[field]
    chosen = rng.sample(docs, min(len(docs), 2 * k))
    values = sorted({str(d.metadata[field]) for d in docs})
    rows = []
    for doc in chosen[: len(chosen) // 2]:
        rows.append(item(doc, field, ask(doc, str(doc.metadata[field])), True))
    for doc in chosen[len(chosen) // 2 :]:
        own = str(doc.metadata[field])
        rows.append(
            item(doc, field, ask(doc, rng.choice([v for v in values if differs(own, v)])), False)
        )
    return rows


def _words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z0-9]+", text.lower()) if len(w) > 2}


def icd_items(docs: list[Document]) -> list[dict]:
    import simple_icd_10_cm as cm

    rng = random.Random("sanity:medical_icd10")
    codes = {d.id: _code_lines(d) for d in docs}
    docs = [d for d in docs if codes[d.id]]
    by_id = {d.id: d for d in docs}
    chapters = sorted({d.metadata["chapter_title"] for d in docs})
    used: set[str] = set()
    rows = []

    def spread(keep: Callable[[str], bool], n: int) -> list[tuple[Document, str, str]]:
        """``n`` unused codes that ``keep``, one document after another (seeded)."""
        pools = {d.id: [c for c in codes[d.id] if keep(c[0])] for d in docs}
        order = list(pools)
        rng.shuffle(order)
        for pool in pools.values():
            rng.shuffle(pool)
        picked = []
        while len(picked) < n and any(pools.values()):
            for doc_id in order:
                while pools[doc_id] and pools[doc_id][-1][0] in used:
                    pools[doc_id].pop()
                if pools[doc_id] and len(picked) < n:
                    code, desc = pools[doc_id].pop()
                    used.add(code)
                    picked.append((by_id[doc_id], code, desc))
        return picked

    k = ICD_QUOTAS["chapter"]
    for n, (doc, code, desc) in enumerate(spread(lambda c: True, 2 * k)):
        own = doc.metadata["chapter_title"]
        asked = own if n < k else rng.choice([c for c in chapters if c != own])
        question = f'Does ICD-10-CM place {code} ({desc}) in the chapter "{asked}"?'
        rows.append(item(doc, "chapter", question, asked == own))
    k = ICD_QUOTAS["block"]
    for n, (doc, code, desc) in enumerate(spread(lambda c: True, 2 * k)):
        asked = doc if n < k else _other_block(rng, doc, docs)
        question = f'Is {code} ({desc}) listed within the ICD-10-CM block "{asked.title}"?'
        rows.append(item(doc, "block", question, asked is doc))
    k = ICD_QUOTAS["billable"]
    leaves = spread(cm.is_leaf, k)
    parents = spread(lambda c: not cm.is_leaf(c), len(leaves))
    for doc, code, _ in leaves[: len(parents)] + parents:
        question = (
            f"Is {code} a billable ICD-10-CM code, one that can be reported as it is, without "
            "further characters?"
        )
        rows.append(item(doc, "billable", question, cm.is_leaf(code)))
    return rows


def _code_lines(doc: Document) -> list[tuple[str, str]]:
    """The (code, description) lines of a block document (the corpus's line format)."""
    matches = (CODE_LINE_RE.match(line) for line in doc.text.split("\n"))
    return [(m[2], m[3].strip()) for m in matches if m]


def _other_block(rng: random.Random, doc: Document, docs: list[Document]) -> Document:
    """Another held-out block, of the same chapter where there is one."""
    others = [d for d in docs if d.id != doc.id]
    same = [d for d in others if d.metadata["chapter"] == doc.metadata["chapter"]]
    return rng.choice(same or others)


GENERATORS = {"legal_contracts": licence_items, "medical_icd10": icd_items}


def check(name: str, rows: list[dict]) -> str:
    """Stop unless the set is large and balanced (per kind), and survives the refusal against
    an existing ``data/RECIPE`` build; returns a one-line summary."""
    counts = Counter((r["about"], r["answer"]) for r in rows)
    for about in {a for a, _ in counts}:
        if counts[(about, "Yes")] != counts[(about, "No")]:
            sys.exit(
                f"{name}: {about} has {counts[(about, 'Yes')]} Yes, {counts[(about, 'No')]} No"
            )
    if len(rows) < MIN_ITEMS:
        sys.exit(f"{name}: {len(rows)} items, fewer than {MIN_ITEMS}")
    summary = (
        f"{name}: {len(rows)} items ({dict(sorted(Counter(r['about'] for r in rows).items()))})"
    )
    manifest = REPO_ROOT / "data" / name / "manifest.json"
    if manifest.is_file():
        train = set(json.loads(manifest.read_text(encoding="utf-8"))["split"]["doc_ids"]["train"])
        kept = sum(r["doc_id"] not in train for r in rows)
        if kept < MIN_ITEMS:
            sys.exit(f"{name}: only {kept} items survive the refusal against {manifest}")
        summary += f"; {kept} survive the refusal against {manifest}"
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpora-dir", type=Path, default=Path("corpora"))
    parser.add_argument("--recipe", nargs="*", default=list(GENERATORS), choices=list(GENERATORS))
    args = parser.parse_args(argv)
    for name in args.recipe:
        docs = held_out_documents(load_recipe(name), args.corpora_dir)
        rows = sorted(
            GENERATORS[name](docs), key=lambda r: (r["doc_id"], r["about"], r["question"])
        )
        summary = check(name, rows)
        write_jsonl(REPO_ROOT / "eval" / "sanity" / f"{name}.jsonl", rows)
        print(f"{summary}; from {len(docs)} held-out documents")


if __name__ == "__main__":
    main()
