"""``lexlora corpora list|fetch``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from lexlora.cli.common import CorporaDir, console

corpora_app = typer.Typer(no_args_is_help=True, help="List and fetch document corpora.")


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
