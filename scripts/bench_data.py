"""Benchmark `lexlora data` on the full `licenses` corpus (single process).

Prints documents/s, MB/s and pairs/s and writes reports/bench/bench_data.json.
Target (issue 2): the whole corpus in ≤ 60 s on one core.

    python scripts/bench_data.py [--recipe legal_contracts] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from lexlora.corpora.catalog import load_documents
from lexlora.data.build import build_dataset
from lexlora.io import write_json
from lexlora.recipe import load_recipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="legal_contracts")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default="reports/bench/bench_data.json")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        recipe = load_recipe(args.recipe, [f"data.output_dir={tmp}/data"])
        corpora = Path(tmp) / "corpora"
        docs = load_documents(recipe.data.corpus, corpora)  # fetch once, outside the timing
        n_chars = sum(len(d.text) for d in docs)
        n_bytes = sum(len(d.text.encode("utf-8")) for d in docs)
        for _ in range(args.repeats):
            start = time.perf_counter()
            manifest = build_dataset(recipe, corpora)
            seconds = time.perf_counter() - start
            pairs = sum(manifest.pairs.total.values())
            rows.append(
                {
                    "seconds": round(seconds, 2),
                    "documents": len(docs),
                    "documents_per_s": round(len(docs) / seconds, 1),
                    "mb_per_s": round(n_bytes / 1e6 / seconds, 2),
                    "pairs": pairs,
                    "pairs_per_s": round(pairs / seconds, 1),
                }
            )
    best = min(rows, key=lambda r: r["seconds"])
    result = {
        "recipe": args.recipe,
        "characters": n_chars,
        "bytes": n_bytes,
        "runs": rows,
        "best": best,
        "target_seconds": 60,
        "meets_target": best["seconds"] <= 60,
        "machine": {"python": platform.python_version(), "processor": platform.processor()},
    }
    table = Table("run", "seconds", "docs/s", "MB/s", "pairs", "pairs/s", title=args.recipe)
    for i, r in enumerate(rows, 1):
        table.add_row(
            str(i),
            f"{r['seconds']:.2f}",
            f"{r['documents_per_s']:.0f}",
            f"{r['mb_per_s']:.2f}",
            str(r["pairs"]),
            f"{r['pairs_per_s']:.0f}",
        )
    Console().print(table)
    Console().print(f"target ≤ 60 s: {'met' if result['meets_target'] else 'MISSED'}")
    write_json(Path(args.out), result)
    print(json.dumps(best))


if __name__ == "__main__":
    main()
