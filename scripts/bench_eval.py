"""Benchmark evaluation: item-scores/s in-process and through an OpenAI-compatible endpoint.

- ``in-process``: the full ``lexlora eval`` of the recipe's newest run (base + adapter + sweep),
  timed end to end (target: ≤ 5 minutes for the default recipe on 2 cores), and item-scores/s;
- ``endpoint`` (with ``--endpoint``): the same evaluation through ``lexlora serve`` (started here
  on 127.0.0.1 with the run's adapter published to a temporary store, the embedded engine), or
  through the server at ``--endpoint URL``; its speed as a ratio of in-process (goal ≥ 0.8x) and
  the largest difference of a headline figure between the two (they must agree).

Prints a table and writes reports/bench/bench_eval.json.

    python scripts/bench_eval.py [--recipe legal_contracts] [--max-items 40] [--endpoint]
    python scripts/bench_eval.py --endpoint http://127.0.0.1:8000 --endpoint-model contracts \\
        --api-key KEY
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from bench_serve import gateway, sha
from rich.console import Console
from rich.table import Table

from lexlora.artifacts.run import latest_run_dir
from lexlora.eval.runner import evaluate
from lexlora.eval.targets import EvalTarget, scorer_for
from lexlora.io import write_json
from lexlora.models import resolve_base_model
from lexlora.quiet import quiet_libraries
from lexlora.recipe import load_recipe


def timed(recipe, scorer, label: str, out: Path) -> dict:
    start = time.perf_counter()
    result = evaluate(recipe, scorer, recipe.dataset_dir, label, out_root=out, log=lambda _: None)
    seconds = time.perf_counter() - start
    items = result.metrics.items
    n = items.choice + items.open + items.sanity + items.recall + items.general
    variants = 2 + sum(1 for r in result.metrics.sweep if r.scale not in (0.0, 1.0))
    return {
        "seconds": round(seconds, 1),
        "items": n,
        "variants_scored": variants,
        "item_scores_per_s": round(n * variants / seconds, 2),
        "meets_5_minutes": seconds <= 300,
        "headline": {
            name: {"base": row.base.mean, "adapter": row.adapter.mean}
            for name, row in result.metrics.headline.items()
        },
    }


def largest_difference(a: dict, b: dict) -> float:
    """The largest |difference| of a headline figure (base or adapter) between two runs."""
    return max(
        abs(a[name][side] - b[name][side]) for name in a.keys() & b.keys() for side in a[name]
    )


SERVED_KEY = "sk-bench-eval"


@contextlib.contextmanager
def served(recipe, base_path: str, tmp: Path) -> Iterator[str]:
    """``lexlora serve`` (embedded engine) with the recipe's newest run published as
    ``bench/adapter``; yields its URL."""
    from lexlora.export.exporter import export_run
    from lexlora.registry import AdapterStore

    store = AdapterStore(tmp / "store")
    export_run(latest_run_dir(recipe), "bench", "adapter", store=store, log=lambda *_: None)
    config = {
        "base_model": base_path,
        "store": str(store.root),
        "max_batch_size": 16,
        "max_queue": 64,
        "tenants": {"bench": {"api_key_sha256": [sha(SERVED_KEY)], "adapters": ["adapter"]}},
    }
    with gateway(config, tmp, "serve") as url:
        yield url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="legal_contracts")
    parser.add_argument(
        "--endpoint",
        nargs="?",
        const="serve",
        help="Also score through an endpoint: alone, a lexlora serve started here; or its URL.",
    )
    parser.add_argument("--endpoint-model", default="adapter")
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
        if not args.skip_in_process:
            scorer = scorer_for(recipe, EvalTarget()).scorer  # the newest run, in-process
            results["in-process"] = timed(recipe, scorer, "bench", Path(tmp))
        if args.endpoint:
            with contextlib.ExitStack() as stack:
                url, key = args.endpoint, args.api_key
                if url == "serve":
                    base_path = resolve_base_model(recipe.model.base)
                    url, key = stack.enter_context(served(recipe, base_path, Path(tmp))), SERVED_KEY
                target = EvalTarget(
                    endpoint=url,
                    api_key=key,
                    endpoint_base=args.endpoint_base,
                    endpoint_model=args.endpoint_model,
                )
                results["endpoint"] = timed(
                    recipe, scorer_for(recipe, target).scorer, "bench", Path(tmp)
                )
    if "in-process" in results and "endpoint" in results:
        ratio = (
            results["endpoint"]["item_scores_per_s"] / results["in-process"]["item_scores_per_s"]
        )
        results["endpoint"]["vs_in_process"] = round(ratio, 2)
        remote, local = results["endpoint"]["headline"], results["in-process"]["headline"]
        results["endpoint"]["max_headline_difference"] = largest_difference(remote, local)
        results["endpoint"]["same_families"] = sorted(remote) == sorted(local)
    table = Table(
        "path", "seconds", "items", "variants", "item-scores/s", "vs in-process", "≤ 5 min"
    )
    for name, r in results.items():
        table.add_row(
            name,
            f"{r['seconds']:.1f}",
            str(r["items"]),
            str(r["variants_scored"]),
            f"{r['item_scores_per_s']:.2f}",
            f"{r['vs_in_process']:.2f}x" if "vs_in_process" in r else "",
            "yes" if r["meets_5_minutes"] else "NO",
        )
    Console().print(table)
    if "max_headline_difference" in results.get("endpoint", {}):
        r = results["endpoint"]
        Console().print(
            f"headline figures, endpoint vs in-process: largest difference "
            f"{r['max_headline_difference']:.2e} (same families: {r['same_families']})"
        )
    write_json(Path(args.out), {"recipe": args.recipe, "results": results})


if __name__ == "__main__":
    main()
