"""``lexlora eval RECIPE [--adapter TENANT/NAME[:VERSION] | --run RUN_DIR] [--endpoint URL]``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lexlora.cli.common import SetOption, console, print_headline


def eval_command(
    recipe: str,
    adapter: Annotated[
        str | None, typer.Option(help="A published adapter: TENANT/NAME[:VERSION|@ALIAS].")
    ] = None,
    run: Annotated[
        Path | None, typer.Option(help="A run folder (default: the recipe's newest run).")
    ] = None,
    endpoint: Annotated[
        str | None, typer.Option(help="Score through an OpenAI-compatible endpoint instead.")
    ] = None,
    api_key: Annotated[str, typer.Option(envvar="LEXLORA_API_KEY")] = "none",
    endpoint_model: Annotated[
        str | None, typer.Option(help="Adapter's model name at the endpoint.")
    ] = None,
    endpoint_base: Annotated[str, typer.Option(help="Base model's name at the endpoint.")] = "base",
    sweep: Annotated[
        str | None, typer.Option(help="Strengths, e.g. 0,0.25,0.5,1,1.5 (default: recipe).")
    ] = None,
    store: Annotated[Path | None, typer.Option(help="Adapter store.")] = None,
    set_: SetOption = None,
) -> None:
    """Score base vs adapter on held-out documents; write reports/RECIPE/EVAL_ID/."""
    from lexlora.eval.targets import EvalTarget, run_eval
    from lexlora.recipe import load_recipe

    cfg = load_recipe(recipe, set_)
    strengths = _parse_sweep(sweep) if sweep else None
    target = EvalTarget(
        run=run,
        adapter=adapter,
        store=store,
        endpoint=endpoint,
        api_key=api_key,
        endpoint_model=endpoint_model,
        endpoint_base=endpoint_base,
    )
    print_headline(run_eval(cfg, target, strengths, log=console.print))


def _parse_sweep(text: str) -> list[float]:
    from lexlora.errors import LexloraError

    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise LexloraError(f"--sweep {text!r}: expected numbers separated by commas") from None
    if any(v < 0 or v > 2 for v in values):
        raise LexloraError(f"--sweep {text!r}: strengths must be between 0 and 2")
    return values
