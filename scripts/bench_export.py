"""Benchmark export: export + validation of a trained run, and publishing 100 adapters.

- ``export``: ``export_run`` on the newest run of the recipe (load the full-precision base, validate
  limits and targets, probe the output change, save, publish), timed end to end;
- ``publish x100``: ``AdapterStore.publish`` of that adapter 100 times into one fresh store
  (copy, checksum, fsync, rename, SQLite commit), with per-publish p50/p95.

Prints a table and writes reports/bench/bench_export.json. Run ``make train`` first.

    python scripts/bench_export.py [--recipe legal_contracts] [--publishes 100]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from lexlora.artifacts.run import latest_run_dir
from lexlora.errors import LexloraError
from lexlora.export.exporter import export_run
from lexlora.io import write_json
from lexlora.recipe import load_recipe
from lexlora.registry import AdapterStore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="legal_contracts")
    parser.add_argument("--publishes", type=int, default=100)
    parser.add_argument("--out", default="reports/bench/bench_export.json")
    args = parser.parse_args()

    recipe = load_recipe(args.recipe)
    run_dir = latest_run_dir(recipe)
    if not (run_dir / "adapter").is_dir():
        raise LexloraError(f"{run_dir}: no adapter; run `make train RECIPE={args.recipe}` first")
    with tempfile.TemporaryDirectory() as tmp:
        store = AdapterStore(Path(tmp) / "store")
        start = time.perf_counter()
        result = export_run(run_dir, "bench", "export", store=store, log=lambda *_: None)
        export_seconds = time.perf_counter() - start

        many = AdapterStore(Path(tmp) / "many")
        meta = dict(result.published.metadata)
        times = []
        start = time.perf_counter()
        for i in range(args.publishes):
            t0 = time.perf_counter()
            many.publish(f"tenant{i % 10}", "contracts", result.published.path, meta)
            times.append(time.perf_counter() - t0)
        publish_total = time.perf_counter() - start
        size = (result.published.path / "adapter_model.safetensors").stat().st_size

    times.sort()
    summary = {
        "recipe": args.recipe,
        "run": str(run_dir),
        "adapter_bytes": size,
        "export_seconds": round(export_seconds, 2),
        "publishes": args.publishes,
        "publish_total_seconds": round(publish_total, 2),
        "publish_ms_p50": round(1000 * statistics.median(times), 1),
        "publish_ms_p95": round(1000 * times[int(0.95 * (len(times) - 1))], 1),
        "publishes_per_s": round(args.publishes / publish_total, 1),
    }
    table = Table("measure", "value", title=f"export, {args.recipe}")
    table.add_row("export + validation (one run)", f"{export_seconds:.2f} s")
    table.add_row(f"publish ×{args.publishes} (total)", f"{publish_total:.2f} s")
    table.add_row(
        "publish p50 / p95", f"{summary['publish_ms_p50']} / {summary['publish_ms_p95']} ms"
    )
    table.add_row("adapter size", f"{size / 1e6:.1f} MB")
    Console().print(table)
    write_json(Path(args.out), summary)


if __name__ == "__main__":
    main()
