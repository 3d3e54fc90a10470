"""What every verb shares: the console, the common options and the evaluation summary."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

if TYPE_CHECKING:
    from lexlora.eval.runner import EvalResult

console = Console()

SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a recipe field, e.g. --set lora.rank=8 (repeatable)."),
]
CorporaDir = Annotated[
    Path, typer.Option(help="Where fetched corpora live (corpora/NAME/documents.jsonl).")
]


TONE_STYLES = {"better": "green", "worse": "red", "neutral": None}


def print_headline(result: EvalResult) -> None:
    """The one-screen summary: every headline family, then the tracks (reading, recall,
    general), the yes-rates, the gate's verdict and where the report is."""
    from lexlora.artifacts.metrics_text import gate_text, headline_text, track_text, yes_rate_text

    console.print("[bold]held-out evaluation (base → adapter)[/]")
    for line in headline_text(result.metrics):
        console.print(f"  {line.text}", style=TONE_STYLES[line.tone], highlight=False)
    if tracks := track_text(result.metrics):
        console.print("[bold]tracks (base → adapter, 95% CI of the change)[/]")
        for line in tracks:
            console.print(f"  {line.text}", style=TONE_STYLES[line.tone], highlight=False)
    if rates := yes_rate_text(result.metrics):
        console.print(f"  {rates}", highlight=False)
    for line in gate_text(result.metrics.gate):
        style = {"worse": "bold red", "better": "green"}.get(line.tone, "dim")
        console.print(line.text, style=style, highlight=False)
    console.print(f"best strength: {result.metrics.best_scale}")
    console.print(f"[green]report[/] {result.report_dir / 'report.html'}")
