"""LoRA or a new word? The four adapter methods on one recipe, same data and step budget.

One ``lexlora train RECIPE --set adapter.method=M`` per method (training and the held-out
evaluation, timed together), on the dataset one ``lexlora data RECIPE`` built. Per method: the
trainable parameters and training time (the run's ``summary.json``), the adapter file's size, and
every evaluation track, base → adapter with the paired 95% interval (the run's ``metrics.json``;
the baseline is the base model scored in the same evaluation). Prints one table and writes
``reports/bench/bench_adapters.json``.

Each method trains at its own learning rate (``--lr``): embedding rows and virtual tokens move
far less per step than LoRA factors at the same rate.

    python scripts/bench_adapters.py [--recipe legal_contracts] [--methods lora prompt_tuning ...]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench_quality import LEXLORA, newest_run, read_metrics, timed, track_rows, yes_rates

METHODS = ["lora", "prompt_tuning", "new_tokens", "lora+new_tokens"]
LEARNING_RATES = {  # recipe's rate for LoRA; the others from PEFT's prompt-tuning examples' range
    "lora": None,
    "prompt_tuning": 3e-2,
    "new_tokens": 1e-2,
    "lora+new_tokens": None,
}


def run_method(recipe: str, method: str, lr: float | None) -> dict:
    started = time.time()
    sets = ["--set", f"adapter.method={method}"]
    if lr is not None:
        sets += ["--set", f"train.learning_rate={lr}"]
    seconds = timed([*LEXLORA, "train", recipe, *sets])
    run_dir = newest_run(recipe, started)
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    metrics, report = read_metrics(run_dir)
    weights = run_dir / "adapter" / "adapter_model.safetensors"
    return {
        "method": method,
        "learning_rate": lr,
        "steps": summary["steps"],
        "trainable_params": summary["trainable_params"],
        "file_bytes": weights.stat().st_size,
        "train_seconds": summary["wall_seconds"],
        "wall_seconds": round(seconds, 1),
        "gate_passed": metrics.gate is not None and metrics.gate.passed,
        "tracks": track_rows(metrics),
        "yes_rate": yes_rates(metrics),
        "report": report,
    }


def print_table(recipe: str, runs: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    tracks = sorted({t for run in runs for t in run["tracks"]}, key=list(runs[0]["tracks"]).index)
    table = Table(
        "method",
        "params",
        "file",
        "train s",
        *[f"{t} Δ [95% CI]" for t in tracks],
        "gate",
        title=f"adapter methods, {recipe}: same data, same steps; Δ = adapter − base",
    )
    for run in runs:
        cells = []
        for track in tracks:
            row = run["tracks"].get(track)
            if row is None:
                cells.append("")
                continue
            mean, low, high = row["difference"]
            cells.append(f"{row['adapter']:.3f} {mean:+.3f} [{low:+.3f}, {high:+.3f}]")
        table.add_row(
            run["method"],
            f"{run['trainable_params']:,}",
            f"{run['file_bytes'] / 1024:,.0f} KiB",
            f"{run['train_seconds']:.0f}",
            *cells,
            "passed" if run["gate_passed"] else "FLAGGED",
        )
    Console(width=200).print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="legal_contracts")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=METHODS)
    parser.add_argument("--out", default="reports/bench/bench_adapters.json")
    args = parser.parse_args()

    from lexlora.io import write_json

    data_seconds = timed([*LEXLORA, "data", args.recipe])
    runs: list[dict] = []
    for method in args.methods:  # rewritten after each method: a long bench keeps its runs
        runs.append(run_method(args.recipe, method, LEARNING_RATES[method]))
        write_json(
            Path(args.out),
            {"recipe": args.recipe, "data_build_seconds": round(data_seconds, 1), "runs": runs},
        )
    print_table(args.recipe, runs)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
