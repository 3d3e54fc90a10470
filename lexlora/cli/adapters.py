"""``lexlora adapters list|show|promote|rm``: the published-adapter registry."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from lexlora.cli.common import console
from lexlora.errors import LexloraError
from lexlora.registry import AdapterStore, parse_ref, split_tenant_ref

adapters_app = typer.Typer(no_args_is_help=True, help="List, inspect, promote and remove adapters.")

StoreOption = Annotated[
    Path | None,
    typer.Option("--store", help="Adapter store folder (default: LEXLORA_HOME/adapters)."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
RefArgument = Annotated[str, typer.Argument(help="TENANT/NAME[:VERSION|@ALIAS]")]


def _versioned(full: str, *, need_version: bool) -> tuple[str, str, int | None]:
    """``TENANT/NAME[:VERSION]`` → (tenant, name, version); aliases are not accepted here."""
    tenant, ref = split_tenant_ref(full)
    name, version, alias = parse_ref(ref)
    if alias is not None or (need_version and version is None):
        form = "TENANT/NAME:VERSION" if need_version else "TENANT/NAME[:VERSION]"
        raise LexloraError(f"adapter reference {full!r}: expected {form}")
    return tenant, name, version


def _confirm(question: str) -> bool | None:
    """y/N on the terminal; None when no answer can come (stdin closed, e.g. ``< /dev/null``)."""
    typer.echo(f"{question} [y/N]: ", nl=False)
    try:
        answer = input()
    except EOFError:
        typer.echo()
        return None
    return answer.strip().lower() in ("y", "yes")


def _echo_json(obj: object) -> None:
    typer.echo(json.dumps(obj, ensure_ascii=False, indent=2))


@adapters_app.command("list")
def adapters_list(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's adapters.")] = None,
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """List published adapter versions."""
    versions = AdapterStore(store).list(tenant)
    if as_json:
        _echo_json([v.as_dict() for v in versions])
        return
    table = Table("tenant", "name", "version", "aliases", "method", "rank", "base", "created (UTC)")
    for v in versions:
        created = v.created_at[:16].replace("T", " ")  # UTC, to the minute
        row = (
            v.tenant,
            v.name,
            str(v.version),
            ", ".join(v.aliases),
            v.method,
            str(v.rank),
            v.base_model,
        )
        table.add_row(*row, created)
    console.print(table if versions else "no adapters published")


@adapters_app.command("show")
def adapters_show(ref: RefArgument, store: StoreOption = None, as_json: JsonOption = False) -> None:
    """Show one version's lexlora.json and folder, after checking its weights' checksum."""
    tenant, name_ref = split_tenant_ref(ref)
    av = AdapterStore(store).resolve(tenant, name_ref, verify=True)
    if as_json:
        _echo_json(av.as_dict())
        return
    console.print(f"[bold]{av.ref}[/] ({', '.join(av.aliases) or 'no aliases'}) — checksum ok")
    console.print(f"path: {av.path}", highlight=False, soft_wrap=True)
    console.print_json(json.dumps(av.metadata, ensure_ascii=False))


@adapters_app.command("promote")
def adapters_promote(
    ref: Annotated[str, typer.Argument(help="TENANT/NAME:VERSION")],
    alias: Annotated[str, typer.Option(help="Alias to point at the version.")] = "prod",
    store: StoreOption = None,
) -> None:
    """Point an alias (default prod) at a version."""
    tenant, name, version = _versioned(ref, need_version=True)
    assert version is not None
    AdapterStore(store).promote(tenant, name, version, alias)
    console.print(f"[green]promoted[/] {tenant}/{name}:{version} → {tenant}/{name}@{alias}")


@adapters_app.command("rm")
def adapters_rm(
    ref: Annotated[str, typer.Argument(help="TENANT/NAME[:VERSION] (no version: all of them)")],
    store: StoreOption = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Remove one version, or every version of an adapter."""
    tenant, name, version = _versioned(ref, need_version=False)
    adapters = AdapterStore(store)
    what = f"{tenant}/{name}" + (f":{version}" if version else " (every version)")
    answer = yes or _confirm(f"Remove {what}?")
    if answer is None:
        raise LexloraError(
            f"adapters rm {what}: no answer to the confirmation prompt (standard input is "
            "closed); pass --yes to remove without asking"
        )
    if not answer:
        console.print("cancelled")
        raise typer.Exit(1)
    adapters.remove(tenant, name, version)
    console.print(f"[green]removed[/] {what}")
