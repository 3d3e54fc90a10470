"""What every verb shares: the console and the common options."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console()

SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a recipe field, e.g. --set lora.rank=8 (repeatable)."),
]
CorporaDir = Annotated[
    Path, typer.Option(help="Where fetched corpora live (corpora/NAME/documents.jsonl).")
]
