"""What ``lexlora eval`` scores against the base model, and the evaluation of it end to end.

A target is a run folder (default: the recipe's newest run), a published adapter
(``TENANT/NAME[:VERSION|@ALIAS]``) or a model behind an OpenAI-compatible endpoint.
:func:`scorer_for` picks the scorer (in-process or through the endpoint) and
:func:`run_eval` checks the dataset, scores, writes the report and, for a run folder, the gate's
verdict that ``lexlora export`` reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lexlora.artifacts.manifest import DataManifest
from lexlora.errors import LexloraError
from lexlora.eval.runner import EvalResult, evaluate
from lexlora.progress import Log
from lexlora.recipe import Recipe


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


@dataclass(frozen=True)
class Scoring:
    """A target made ready: its scorer, its label in the report, and its run folder (None for a
    published adapter or an endpoint: no gate file is written for those)."""

    scorer: Any  # LocalScorer | EndpointScorer
    label: str
    run_dir: Path | None


def scorer_for(recipe: Recipe, target: EvalTarget) -> Scoring:
    """The scorer for ``target``: through its endpoint, or in-process (base + adapter)."""
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
            resolve_base_model(recipe.model.base),
        )
        return Scoring(scorer, f"{target.endpoint_model} at {target.endpoint}", None)
    from lexlora.eval.local import load_local_scorer

    adapter_dir, label, run_dir = _adapter_dir(recipe, target)
    return Scoring(load_local_scorer(recipe.model.base, adapter_dir), label, run_dir)


def run_eval(
    recipe: Recipe,
    target: EvalTarget,
    sweep: list[float] | None = None,
    log: Log = print,
    out_root: Path = Path("reports"),
) -> EvalResult:
    """Evaluate ``target`` on the recipe's held-out documents; a run folder also gets the gate's
    verdict (``eval_gate.json``)."""
    from lexlora.quiet import quiet_libraries

    quiet_libraries()
    data_dir = recipe.dataset_dir
    DataManifest.load(data_dir, recipe.name)
    scoring = scorer_for(recipe, target)
    result = evaluate(
        recipe, scoring.scorer, data_dir, scoring.label, sweep=sweep, out_root=out_root, log=log
    )
    if scoring.run_dir is not None and result.metrics.gate is not None:
        result.metrics.gate.save(scoring.run_dir, result.report_dir)  # `lexlora export` reads it
    return result


def _adapter_dir(recipe: Recipe, target: EvalTarget) -> tuple[Path, str, Path | None]:
    from lexlora.artifacts.run import latest_run_dir
    from lexlora.registry import AdapterStore, split_tenant_ref

    if target.adapter:
        tenant, ref = split_tenant_ref(target.adapter)
        published = AdapterStore(target.store).resolve(tenant, ref)
        return published.path, published.ref, None
    run_dir = target.run or latest_run_dir(recipe)
    return run_dir / "adapter", f"run {run_dir.name}", run_dir
