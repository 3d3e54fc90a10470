"""``lexlora train RECIPE [--resume]``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from lexlora.cli.common import SetOption, console, print_headline

if TYPE_CHECKING:
    from lexlora.artifacts.run import TrainSummary


def train(
    recipe: str,
    set_: SetOption = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the newest run from its newest checkpoint.")
    ] = False,
    evaluate: Annotated[
        bool, typer.Option("--eval/--no-eval", help="Evaluate on held-out documents after.")
    ] = True,
) -> None:
    """Fit the recipe's LoRA adapter: runs/RECIPE/RUN_ID/adapter (building the data first)."""
    from lexlora.recipe import load_recipe

    cfg = load_recipe(recipe, set_)  # before the (slow) training imports: a mistake shows at once
    from lexlora.train.trainer import train as train_adapter

    summary = train_adapter(cfg, resume=resume, console=console)
    if summary.interrupted:
        console.print(
            f"[yellow]interrupted[/] at step {summary.steps}; checkpoint saved in "
            f"{summary.run_dir}/checkpoints. Continue with: lexlora train {recipe} --resume"
        )
        raise typer.Exit(130)
    table = Table("", "value", title="training summary")
    for key, value in summary_rows(summary).items():
        table.add_row(key, value)
    console.print(table)
    console.print(f"[green]adapter[/] {summary.adapter_dir}")
    if evaluate and int(os.environ.get("RANK", "0")) == 0:
        from lexlora.eval.targets import EvalTarget, run_eval
        from lexlora.eval.tasks import spec_path

        tasks = spec_path(cfg.name, cfg.eval.tasks_file)
        if not tasks.is_file():
            console.print(f"no evaluation tasks ({tasks}); skipping the held-out evaluation")
            return
        print_headline(run_eval(cfg, EvalTarget(run=Path(summary.run_dir)), log=console.print))


def summary_rows(summary: TrainSummary) -> dict[str, str]:
    """The summary table's rows; a figure the run did not produce reads ``n/a``."""
    rows = {
        "precision": summary.precision,
        "steps": str(summary.steps),
        "train loss (first → last)": f"{_figure(summary.train_loss_first, '.4f')} → "
        f"{_figure(summary.train_loss_last, '.4f')}",
        "held-out loss, base model": _figure(summary.eval_loss_base, ".4f"),
        "held-out loss, adapter": _figure(summary.eval_loss_adapter, ".4f"),
        "tokens seen (non-padding)": _figure(summary.tokens_seen, ","),
        "wall time": _figure(summary.wall_seconds, ".0f", " s"),
        "peak memory (RSS)": _figure(summary.peak_rss_mb, ",.0f", " MB"),
    }
    if summary.peak_cuda_mb is not None:
        rows["peak CUDA memory"] = _figure(summary.peak_cuda_mb, ",.0f", " MB")
    return rows


def _figure(value: float | None, spec: str, unit: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{unit}"
