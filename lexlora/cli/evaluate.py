"""``lexlora eval RECIPE [--adapter TENANT/NAME[:VERSION] | --run RUN_DIR] [--endpoint URL]``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from lexlora.cli.common import SetOption, console


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
    print_headline(run_eval(cfg, target, strengths))


@dataclass(frozen=True)
class EvalTarget:
    """What is scored against the base model: a run folder (default: the recipe's newest run),
    a published adapter (``TENANT/NAME[:VERSION|@ALIAS]``), or a model behind an endpoint."""

    run: Path | None = None
    adapter: str | None = None
    store: Path | None = None
    endpoint: str | None = None
    api_key: str = "none"
    endpoint_model: str | None = None
    endpoint_base: str = "base"


def run_eval(cfg, target: EvalTarget, sweep: list[float] | None = None):
    """Evaluate ``target`` on the recipe's held-out documents; a run folder also gets the gate's
    verdict (``eval_gate.json``)."""
    from lexlora.data.build import dataset_dir
    from lexlora.data.manifest import verify_dataset
    from lexlora.errors import LexloraError
    from lexlora.eval.runner import evaluate
    from lexlora.quiet import quiet_libraries

    quiet_libraries()
    data_dir = dataset_dir(cfg)
    verify_dataset(data_dir, cfg.name)
    if target.endpoint:
        from lexlora.eval.endpoint import EndpointScorer
        from lexlora.models import resolve_base_model

        if not target.endpoint_model:
            raise LexloraError("--endpoint needs --endpoint-model (the adapter's model name)")
        scorer = EndpointScorer(
            target.endpoint,
            target.api_key,
            target.endpoint_base,
            target.endpoint_model,
            resolve_base_model(cfg.model.base),
        )
        label = f"{target.endpoint_model} at {target.endpoint}"
        run_dir = None
    else:
        from lexlora.eval.local import load_local_scorer

        adapter_dir, label, run_dir = _adapter_dir(cfg, target)
        scorer = load_local_scorer(cfg.model.base, adapter_dir)
    result = evaluate(cfg, scorer, data_dir, label, sweep=sweep, log=console.print)
    if run_dir is not None:  # what `lexlora export` checks before publishing this run
        from lexlora.eval.gate import write_gate

        write_gate(run_dir, result.metrics["gate"], result.report_dir)
    return result


def _adapter_dir(cfg, target: EvalTarget):
    from lexlora.registry import AdapterStore, split_tenant_ref
    from lexlora.train.run_dir import latest_run_dir

    if target.adapter:
        tenant, ref = split_tenant_ref(target.adapter)
        published = AdapterStore(target.store).resolve(tenant, ref)
        return published.path, published.ref, None
    run_dir = target.run or latest_run_dir(cfg)
    return run_dir / "adapter", f"run {run_dir.name}", run_dir


def _parse_sweep(text: str) -> list[float]:
    from lexlora.errors import LexloraError

    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise LexloraError(f"--sweep {text!r}: expected numbers separated by commas") from None
    if any(v < 0 or v > 2 for v in values):
        raise LexloraError(f"--sweep {text!r}: strengths must be between 0 and 2")
    return values


def print_headline(result) -> None:
    """The one-screen summary: every headline family, then the tracks (reading, recall,
    general), the yes-rates, the gate's verdict and where the report is."""
    from lexlora.eval.report import gate_text, headline_text, track_text, yes_rate_text

    console.print("[bold]held-out evaluation (base → adapter)[/]")
    for line in headline_text(result.metrics):
        console.print(f"  {line}", style=_style(line), highlight=False)
    if tracks := track_text(result.metrics):
        console.print("[bold]tracks (base → adapter, 95% CI of the change)[/]")
        for line in tracks:
            console.print(f"  {line}", style=_style(line), highlight=False)
    if rates := yes_rate_text(result.metrics):
        console.print(f"  {rates}", highlight=False)
    for line in gate_text(result.metrics):
        bad = "FLAGGED" in line or "WORSE" in line
        style = "bold red" if bad else "dim" if line.startswith("not gated") else "green"
        console.print(line, style=style, highlight=False)
    console.print(f"best strength: {result.metrics['best_scale']}")
    console.print(f"[green]report[/] {result.report_dir / 'report.html'}")


def _style(line: str) -> str | None:
    return "red" if "WORSE" in line else "green" if "better" in line else None
