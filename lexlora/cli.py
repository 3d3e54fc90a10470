"""The ``lexlora`` command: thin verbs that parse arguments, load the recipe and call one stage."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import click
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
from rich.table import Table

from lexlora.errors import LexloraError

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
corpora_app = typer.Typer(no_args_is_help=True, help="List and fetch document corpora.")
app.add_typer(corpora_app, name="corpora")
console = Console()

SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a recipe field, e.g. --set lora.rank=8 (repeatable)."),
]
CorporaDir = Annotated[
    Path, typer.Option(help="Where fetched corpora live (corpora/NAME/documents.jsonl).")
]


@corpora_app.command("list")
def corpora_list() -> None:
    """List the known corpora and whether they are fetched."""
    from lexlora.corpora.catalog import corpus_manifest, documents_path, list_corpora

    table = Table("name", "source", "licence", "fetched")
    for name in list_corpora():
        m = corpus_manifest(name)
        fetched = documents_path(name, Path("corpora")).is_file()
        source = f"{m.package}=={m.version}" if m.package else "a folder of yours"
        table.add_row(name, source, m.licence, "yes" if fetched else "no")
    console.print(table)


@corpora_app.command("fetch")
def corpora_fetch(
    name: str,
    path: Annotated[Path | None, typer.Option(help="Folder to read (corpus 'folder').")] = None,
    corpora_dir: CorporaDir = Path("corpora"),
) -> None:
    """Install a corpus's package data if missing and write corpora/NAME/documents.jsonl."""
    from lexlora.corpora.catalog import fetch_corpus

    out = fetch_corpus(name, corpora_dir, path)
    n = sum(1 for _ in out.open(encoding="utf-8"))
    console.print(f"[green]fetched[/] {name}: {n} documents → {out}")


@app.command("data")
def data(recipe: str, set_: SetOption = None, corpora_dir: CorporaDir = Path("corpora")) -> None:
    """Build the recipe's instruction data: data/RECIPE/{train,validation,test}.jsonl + manifest."""
    from lexlora.data.build import build_dataset, dataset_dir
    from lexlora.recipe import load_recipe

    cfg = load_recipe(recipe, set_)
    columns = (*Progress.get_default_columns()[:1], BarColumn(), MofNCompleteColumn())
    with Progress(*columns, TimeRemainingColumn(), console=console, transient=True) as bar:
        task = bar.add_task(f"building {cfg.name}", total=None)
        manifest = build_dataset(
            cfg, corpora_dir, lambda done, total: bar.update(task, completed=done, total=total)
        )
    print_data_summary(manifest, dataset_dir(cfg))


@app.command("train")
def train(
    recipe: str,
    set_: SetOption = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the newest run from its newest checkpoint.")
    ] = False,
) -> None:
    """Fit the recipe's LoRA adapter: runs/RECIPE/RUN_ID/adapter (building the data first)."""
    from lexlora.recipe import load_recipe
    from lexlora.train.trainer import train as train_adapter

    summary = train_adapter(load_recipe(recipe, set_), resume=resume, console=console)
    if summary.interrupted:
        console.print(
            f"[yellow]interrupted[/] at step {summary.steps}; checkpoint saved in "
            f"{summary.run_dir}/checkpoints. Continue with: lexlora train {recipe} --resume"
        )
        raise typer.Exit(130)
    table = Table("", "value", title="training summary")
    rows = {
        "precision": summary.precision,
        "steps": summary.steps,
        "train loss (first → last)": f"{summary.train_loss_first:.4f} → "
        f"{summary.train_loss_last:.4f}",
        "held-out loss, base model": f"{summary.eval_loss_base:.4f}",
        "held-out loss, adapter": f"{summary.eval_loss_adapter:.4f}",
        "tokens seen (non-padding)": f"{summary.tokens_seen:,}",
        "wall time": f"{summary.wall_seconds:.0f} s",
        "peak memory (RSS)": f"{summary.peak_rss_mb:,.0f} MB",
    }
    if summary.peak_cuda_mb is not None:
        rows["peak CUDA memory"] = f"{summary.peak_cuda_mb:,.0f} MB"
    for key, value in rows.items():
        table.add_row(key, str(value))
    console.print(table)
    console.print(f"[green]adapter[/] {summary.adapter_dir}")


def print_data_summary(manifest: dict, out: Path) -> None:
    docs = manifest["documents"]
    console.print(
        f"documents: {docs['read']} read, {docs['kept']} kept, skipped {docs['skipped'] or 0}, "
        f"duplicates {docs['duplicates'] or 0}"
    )
    table = Table("builder", "train", "validation", "test")
    for name, counts in manifest["pairs"]["by_builder"].items():
        table.add_row(name, *(str(counts[s]) for s in ("train", "validation", "test")))
    total = manifest["pairs"]["total"]
    table.add_row("[bold]total", *(f"[bold]{total[s]}" for s in ("train", "validation", "test")))
    console.print(table)
    split = manifest["split"]["documents"]
    console.print(f"documents per split: {split}")
    console.print(f"personal data replaced: {manifest['scrub']['replacements']}")
    leak = manifest["leakage"]
    console.print(
        f"leakage: test answers share {leak['mean_overlap']:.1%} of their {leak['ngram']}-grams "
        f"with training on average (limit {leak['max_overlap']:.0%})"
    )
    console.print(f"[green]wrote[/] {out}/{{train,validation,test}}.jsonl and manifest.json")


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


if __name__ == "__main__":
    main()
