"""Benchmark evaluation: items/s in-process and through an OpenAI-compatible endpoint.

- ``in-process``: the full ``lexlora eval`` of the recipe's newest run (base + adapter + sweep),
  timed end to end (target: ≤ 5 minutes for the default recipe on 2 cores), and items/s;
- ``endpoint`` (with ``--endpoint``): the same evaluation through the endpoint's API.

Prints a table and writes reports/bench/bench_eval.json.

    python scripts/bench_eval.py [--recipe legal_contracts]
    python scripts/bench_eval.py --endpoint http://127.0.0.1:8000 --endpoint-model contracts \\
        --api-key KEY
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from lexlora.data.build import dataset_dir
from lexlora.eval.runner import evaluate
from lexlora.io import write_json
from lexlora.models import resolve_base_model
from lexlora.quiet import quiet_libraries
from lexlora.recipe import load_recipe
from lexlora.train.run_dir import latest_run_dir


def timed(recipe, scorer, label: str, out: Path) -> dict:
    start = time.perf_counter()
    result = evaluate(recipe, scorer, dataset_dir(recipe), label, out_root=out, log=lambda _: None)
    seconds = time.perf_counter() - start
    items = result.metrics["items"]
    n = items["choice"] + items["open"] + items["sanity"]
    variants = 2 + sum(1 for r in result.metrics["sweep"] if r["scale"] not in (0.0, 1.0))
    return {
        "seconds": round(seconds, 1),
        "items": n,
        "variants_scored": variants,
        "item_scores_per_s": round(n * variants / seconds, 2),
        "meets_5_minutes": seconds <= 300,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="legal_contracts")
    parser.add_argument("--endpoint")
    parser.add_argument("--endpoint-model")
    parser.add_argument("--endpoint-base", default="base")
    parser.add_argument("--api-key", default="none")
    parser.add_argument("--skip-in-process", action="store_true")
    parser.add_argument("--max-items", type=int, help="Score a seeded subset (eval.max_items).")
    parser.add_argument("--out", default="reports/bench/bench_eval.json")
    args = parser.parse_args()
    quiet_libraries()
    overrides = [f"eval.max_items={args.max_items}"] if args.max_items else []
    recipe = load_recipe(args.recipe, overrides)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        from lexlora.eval.local import load_local_scorer

        if not args.skip_in_process:
            scorer = load_local_scorer(recipe.model.base, latest_run_dir(recipe) / "adapter")
            results["in-process"] = timed(recipe, scorer, "bench", Path(tmp))
        if args.endpoint:
            from lexlora.eval.endpoint import EndpointScorer

            remote = EndpointScorer(
                args.endpoint,
                args.api_key,
                args.endpoint_base,
                args.endpoint_model,
                resolve_base_model(recipe.model.base),
            )
            results["endpoint"] = timed(recipe, remote, "bench", Path(tmp))
    table = Table("path", "seconds", "items", "variants", "item-scores/s", "≤ 5 min")
    for name, r in results.items():
        table.add_row(
            name,
            f"{r['seconds']:.1f}",
            str(r["items"]),
            str(r["variants_scored"]),
            f"{r['item_scores_per_s']:.2f}",
            "yes" if r["meets_5_minutes"] else "NO",
        )
    Console().print(table)
    write_json(Path(args.out), {"recipe": args.recipe, "results": results})


if __name__ == "__main__":
    main()
