"""Benchmark what the recipe is for: base → adapter on every evaluation track, over seeds.

One fresh data build (``lexlora data RECIPE``, timed), then ``lexlora train RECIPE --set
train.seed=S`` (training and the held-out evaluation, timed together) for each seed. Every row of
the table is read from the run's own ``metrics.json``; the baseline is the base model scored in
the same evaluation. Tracks (``metrics.json`` headline families):

- *reading*: yes/no questions about held-out documents with the excerpt in the prompt
  (``yes_no_balanced_accuracy``);
- *recall*: closed-book yes/no questions about training documents in held-out wordings
  (``recall_balanced_accuracy``);
- *general*: out-of-domain questions shipped in ``eval/general/`` (``general_accuracy``,
  ``general_answer_nll``), when the evaluation has them;
- *sanity*: the independently labelled yes/no set (``sanity_accuracy``).

Per run it also records the gate verdict, the adapter's Yes-rate on each balanced yes/no set and
the wall time. Prints a table and writes ``reports/bench/bench_quality.json``.

    python scripts/bench_quality.py [--recipe legal_contracts] [--seeds 42 43 44]
        [--set lora.target_modules=all-linear ...] [--out reports/bench/NAME.json]

``--set`` overrides a recipe field for the data build and every seed (a variant measured side by
side with the recipe as it is).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from lexlora.artifacts.gate import GateVerdict
from lexlora.artifacts.metrics import METRICS_FILE, EvalMetrics

TRACKS = {
    "reading": "yes_no_balanced_accuracy",
    "recall": "recall_balanced_accuracy",
    "general": "general_accuracy",
    "general NLL": "general_answer_nll",
    "sanity": "sanity_accuracy",
}
YES_RATE_SETS = {"reading": "yes_no", "recall": "recall", "sanity": "sanity_yes_no"}
LEXLORA = [sys.executable, "-m", "lexlora.cli"]


def timed(cmd: list[str]) -> float:
    """Run ``cmd`` (output streamed); its wall time in seconds. Exits on failure."""
    start = time.perf_counter()
    proc = subprocess.run(cmd)
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}")
    return time.perf_counter() - start


def newest_run(recipe: str, after: float) -> Path:
    runs = [p for p in Path("runs", recipe).glob("*") if p.is_dir() and p.stat().st_mtime >= after]
    if not runs:
        sys.exit(f"no run folder under runs/{recipe} was written by the training run")
    return max(runs, key=lambda p: p.stat().st_mtime)


def read_metrics(run_dir: Path) -> tuple[EvalMetrics, str]:
    """The run's evaluation metrics and its report folder (named by ``eval_gate.json``)."""
    gate = GateVerdict.load(run_dir)
    if gate is None or gate.report is None:
        sys.exit(f"{run_dir}: no evaluation (no eval_gate.json naming its report)")
    return EvalMetrics.load(Path(gate.report) / METRICS_FILE), gate.report


def track_rows(metrics: EvalMetrics) -> dict[str, dict]:
    """Base, adapter and the paired difference (mean, 95% interval) of each track present."""
    rows = {}
    for track, family in TRACKS.items():
        row = metrics.headline.get(family)
        if row is None:
            continue
        rows[track] = {
            "family": family,
            "n": row.base.n,
            "base": row.base.mean,
            "adapter": row.adapter.mean,
            "difference": [row.difference.mean, row.difference.low, row.difference.high],
        }
    return rows


def yes_rates(metrics: EvalMetrics) -> dict[str, dict]:
    out = {}
    for name, key in YES_RATE_SETS.items():
        block = getattr(metrics, key)
        if block and block.balanced_accuracy is not None:
            out[name] = block.yes_rate.model_dump()
    return out


def run_seed(recipe: str, seed: int, sets: list[str]) -> dict:
    started = time.time()
    seconds = timed([*LEXLORA, "train", recipe, *overrides([*sets, f"train.seed={seed}"])])
    metrics, report = read_metrics(newest_run(recipe, started))
    return {
        "seed": seed,
        "wall_seconds": round(seconds, 1),
        "gate_passed": metrics.gate is not None and metrics.gate.passed,
        "gate_flagged": [f.family for f in metrics.gate.flagged] if metrics.gate else [],
        "tracks": track_rows(metrics),
        "yes_rate": yes_rates(metrics),
        "report": report,
    }


def overrides(sets: list[str]) -> list[str]:
    return [arg for item in sets for arg in ("--set", item)]


def print_table(recipe: str, data_seconds: float, runs: list[dict], sets: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    title = f" ({', '.join(sets)})" if sets else ""
    table = Table(
        "seed",
        "track",
        "n",
        "base",
        "adapter",
        "Δ [95% CI]",
        "adapter Yes-rate",
        title=f"quality, {recipe}{title}: data build {data_seconds:.0f} s",
    )
    for run in runs:
        for track, row in run["tracks"].items():
            mean, low, high = row["difference"]
            rate = run["yes_rate"].get(track)
            table.add_row(
                str(run["seed"]),
                track,
                str(row["n"]),
                f"{row['base']:.3f}",
                f"{row['adapter']:.3f}",
                f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]",
                "" if rate is None else f"{rate['adapter']:.0%} (base {rate['base']:.0%})",
            )
        verdict = "passed" if run["gate_passed"] else "FLAGGED " + ", ".join(run["gate_flagged"])
        table.add_row(str(run["seed"]), f"gate {verdict}", "", "", "", "", "")
        table.add_row(str(run["seed"]), f"wall {run['wall_seconds']:.0f} s", *[""] * 5)
    Console().print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="legal_contracts")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--out", default="reports/bench/bench_quality.json")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="FIELD=VALUE")
    args = parser.parse_args()

    from lexlora.io import write_json

    data_seconds = timed([*LEXLORA, "data", args.recipe, *overrides(args.sets)])
    runs: list[dict] = []
    for seed in args.seeds:  # the JSON is rewritten after each seed: a long bench keeps its runs
        runs.append(run_seed(args.recipe, seed, args.sets))
        write_json(Path(args.out), summary(args, data_seconds, runs))
    print_table(args.recipe, data_seconds, runs, args.sets)
    print(f"wrote {args.out}")


def summary(args: argparse.Namespace, data_seconds: float, runs: list[dict]) -> dict:
    return {
        "recipe": args.recipe,
        "seeds": args.seeds,
        "overrides": args.sets,
        "complete": len(runs) == len(args.seeds),
        "data_build_seconds": round(data_seconds, 1),
        "runs": runs,
        "gate_passed_all": all(r["gate_passed"] for r in runs),
        "end_to_end_seconds_max": round(data_seconds + max(r["wall_seconds"] for r in runs), 1),
    }


if __name__ == "__main__":
    main()
