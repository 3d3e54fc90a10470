"""``lexlora serve --config serve.yaml`` and ``lexlora serve keygen [TENANT]``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from lexlora.cli.common import console

if TYPE_CHECKING:
    from lexlora.serve.verify import ModelCheck

serve_app = typer.Typer(
    invoke_without_command=True,
    help="Serve the base model and tenants' adapters over an OpenAI-compatible API.",
)


@serve_app.callback()
def serve(
    ctx: typer.Context,
    config: Annotated[
        Path | None, typer.Option(help="serve.yaml (format: lexlora.serve.config).")
    ] = None,
    host: Annotated[str | None, typer.Option(help="Override the config's host.")] = None,
    port: Annotated[int | None, typer.Option(help="Override the config's port.")] = None,
    engine: Annotated[
        str | None, typer.Option(help="Override the config's engine: embedded or vllm.")
    ] = None,
) -> None:
    """Start the gateway (uvicorn) on HOST:PORT."""
    if ctx.invoked_subcommand is not None:
        return
    from lexlora.errors import LexloraError
    from lexlora.serve.config import load_config, validate_config
    from lexlora.serve.server import build_app, run_server

    if config is None:
        raise LexloraError("lexlora serve: --config serve.yaml is required")
    cfg = load_config(config)
    if engine is not None:
        raw = {**cfg.model_dump(exclude_unset=True), "engine": engine}
        cfg = validate_config(raw, f"{config} with --engine {engine}")
    app = build_app(cfg)
    host, port = host or cfg.host, cfg.port if port is None else port
    tenants = ", ".join(cfg.tenants) or "none"
    console.print(
        f"serving [bold]{cfg.model_name}[/] ({cfg.engine} engine) on http://{host}:{port} "
        f"— tenants: {tenants}",
        highlight=False,
        soft_wrap=True,
    )
    run_server(app, host, port)


@serve_app.command("verify")
def verify(
    endpoint: Annotated[str, typer.Option(help="The served API, e.g. http://127.0.0.1:8000.")],
    api_key: Annotated[str, typer.Option(help="A tenant's API key.")],
    models: Annotated[
        str | None,
        typer.Option(help="Comma-separated model ids (default: the base and every adapter)."),
    ] = None,
    store: Annotated[
        Path | None, typer.Option(help="Adapter store (default: the config's, else LEXLORA_HOME).")
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(help="serve.yaml: the base model, the store and the key's tenant."),
    ] = None,
    base: Annotated[str | None, typer.Option(help="Base model (default: the config's).")] = None,
    tenant: Annotated[
        str | None, typer.Option(help="The key's tenant (default: found in the config).")
    ] = None,
    max_tokens: Annotated[int, typer.Option(help="Greedy tokens per prompt.")] = 16,
) -> None:
    """Send greedy requests to a served model and compare with HF + PEFT run offline, token for
    token (exit code 1 on any mismatch)."""
    from lexlora.serve.verify import run_verify

    results = run_verify(
        endpoint,
        api_key,
        models=[m.strip() for m in models.split(",") if m.strip()] if models else None,
        store=store,
        config=config,
        base=base,
        tenant=tenant,
        max_tokens=max_tokens,
    )
    _print_checks(results)
    if not all(r.ok for r in results):
        raise typer.Exit(1)


@serve_app.command("keygen")
def keygen(
    tenant: Annotated[
        str | None, typer.Argument(help="Tenant the key is for (omit for the admin key).")
    ] = None,
) -> None:
    """Print a new API key and the sha256 line to paste into serve.yaml (the key is shown once)."""
    from lexlora.serve.config import check_tenant_name
    from lexlora.serve.tenants import hash_key, new_key

    if tenant is not None:
        try:
            check_tenant_name(tenant)
        except ValueError as exc:
            from lexlora.errors import LexloraError

            raise LexloraError(str(exc)) from None
    key = new_key()
    digest = hash_key(key)
    typer.echo(f"key: {key}")
    if tenant is None:
        typer.echo(f"serve.yaml:  admin_key_sha256: {digest}")
    else:
        typer.echo(f"serve.yaml:  tenants: {{{tenant}: {{api_key_sha256: [{digest}]}}}}")


def _print_checks(checks: list[ModelCheck]) -> None:
    """``lexlora serve verify``'s table: each model, its prompts matched, the first mismatch."""
    from rich.table import Table

    table = Table(title="served vs HF + PEFT offline (greedy, fp32)")
    for column in ("model", "runs", "prompts matched", "result", "first mismatch"):
        table.add_column(column)
    for check in checks:
        bad = check.first_mismatch()
        detail = ""
        if bad is not None:
            detail = (
                f"{bad.prompt!r}: served {bad.served_text!r} ({bad.served_tokens} tok) vs "
                f"offline {bad.offline_text!r} ({bad.offline_tokens} tok)"
            )
        table.add_row(
            check.model,
            check.target,
            f"{check.matched}/{len(check.samples)}",
            "[green]match[/]" if check.ok else "[red]MISMATCH[/]",
            detail,
        )
    console.print(table)
