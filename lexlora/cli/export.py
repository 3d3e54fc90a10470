"""``lexlora export RUN_DIR --tenant T --name N``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lexlora.cli.common import console


def export(
    run_dir: Annotated[Path, typer.Argument(help="A run folder: runs/RECIPE/RUN_ID.")],
    tenant: Annotated[str, typer.Option(help="Tenant that owns the adapter.")],
    name: Annotated[str, typer.Option(help="Adapter name, e.g. contracts.")],
    version: Annotated[str, typer.Option(help="'auto' (next) or a number.")] = "auto",
    scale: Annotated[
        float, typer.Option(help="Bake a strength: 1 as trained, 0.5 half, >1 overdrive.")
    ] = 1.0,
    weight: Annotated[float, typer.Option(help="Weight of this run's adapter in --combine.")] = 1.0,
    combine: Annotated[
        list[str] | None,
        typer.Option(help="Another adapter REF:WEIGHT (tenant/name[:version] or a folder)."),
    ] = None,
    combine_method: Annotated[
        str,
        typer.Option(
            help="cat: exact weighted sum of the updates (rank adds up); svd: that sum at the "
            "largest input rank; linear/ties: PEFT's factor-wise mixes (equal ranks)."
        ),
    ] = "linear",
    merge: Annotated[
        Path | None, typer.Option(help="Also write a merged full model (safetensors) here.")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Replace an existing --merge folder that lexlora wrote.")
    ] = False,
    store: Annotated[
        Path | None, typer.Option(help="Adapter store (default LEXLORA_HOME/adapters).")
    ] = None,
    max_lora_rank: Annotated[
        int | None, typer.Option(help="Override export.max_lora_rank of the recipe.")
    ] = None,
    force: Annotated[
        bool, typer.Option(help="Publish even if the no-regression gate flagged the run.")
    ] = False,
) -> None:
    """Validate a run's adapter and publish it to the tenant's adapter store."""
    from lexlora.errors import LexloraError
    from lexlora.export.exporter import export_run, parse_combine
    from lexlora.registry import MAX_VERSION, AdapterStore, validate_version

    try:  # ASCII digits only: int() and str.isdigit() also take '²' or '٣'
        number = None if version == "auto" else validate_version(version)
    except LexloraError:
        raise LexloraError(
            f"--version {version!r}: expected 'auto' or an integer from 1 to {MAX_VERSION} "
            "(ASCII digits)"
        ) from None
    result = export_run(
        run_dir,
        tenant,
        name,
        store=AdapterStore(store),
        version=number,
        scale=scale,
        weight=weight,
        combine=[parse_combine(spec) for spec in combine or []],
        combine_method=combine_method,
        merge_dir=merge,
        overwrite=overwrite,
        max_rank=max_lora_rank,
        force=force,
        log=console.print,
    )
    console.print(
        f"[green]exported[/] {result.published.ref} (rank {result.published.rank}, "
        f"probe logit change {result.probe_change:.4f})"
    )
