"""The ``lexlora`` command: thin verbs that parse arguments, load the recipe and call one stage.

One module per verb: corpora, data, train, export, adapters, serve, eval.
"""

from __future__ import annotations

import sys

import click
import typer
from rich.console import Console

from lexlora.cli import data, evaluate, export, train
from lexlora.cli.adapters import adapters_app
from lexlora.cli.corpora import corpora_app
from lexlora.cli.serve import serve_app
from lexlora.errors import LexloraError

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Adapt open LLMs to law and medicine with LoRA.",
)
app.add_typer(corpora_app, name="corpora")
app.add_typer(adapters_app, name="adapters")
app.command("data")(data.data)
app.command("train")(train.train)
app.command("export")(export.export)
app.add_typer(serve_app, name="serve")
app.command("eval")(evaluate.eval_command)


def main() -> None:
    """Entry point: user errors print one line and exit 2, never a traceback."""
    try:
        code = app(standalone_mode=False)  # returns typer.Exit's code instead of exiting
    except LexloraError as exc:
        Console(stderr=True).print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        Console(stderr=True).print("interrupted")
        sys.exit(130)
    if isinstance(code, int) and code:
        sys.exit(code)
