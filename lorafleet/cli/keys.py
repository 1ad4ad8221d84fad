"""`lorafleet keys create|list|revoke`: gateway API keys, stored hashed; a new key is printed once."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from lorafleet.cli.common import console, print_json, settings_from

app = typer.Typer(help="API keys for the gateway.", no_args_is_help=True)


def _store(ctx: typer.Context):
    from lorafleet.serve.keys import KeyStore

    settings = settings_from(ctx)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return KeyStore(settings.db_url)


@app.command()
def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Option(help="A unique name for the key (who or what uses it).")],
    adapters: Annotated[str, typer.Option(help="Comma-separated fnmatch patterns: 'support-*,clauses@prod'.")] = "*",
    admin: Annotated[bool, typer.Option("--admin", help="May use the admin API and every adapter.")] = False,
    rpm: Annotated[int | None, typer.Option(help="Requests per minute (429 beyond).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Create a key and print it once (only its hash is stored)."""
    info, plaintext = _store(ctx).create(name=name, adapters=adapters, admin=admin, rpm=rpm)
    if json_out:
        print_json({"name": info.name, "key": plaintext, "adapters": list(info.patterns), "admin": info.admin,
                    "rpm": info.rpm})
        return
    console.print(f"key for [bold]{info.name}[/] (shown once, store it now):")
    typer.echo(plaintext)


@app.command("list")
def list_keys(
    ctx: typer.Context,
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List keys (never their secrets)."""
    rows = _store(ctx).list()
    if json_out:
        print_json([{"name": k.name, "prefix": k.hint, "adapters": list(k.patterns), "admin": k.admin,
                     "rpm": k.rpm, "revoked": k.revoked, "created_at": k.created_at} for k in rows])
        return
    table = Table("name", "prefix", "adapters", "admin", "rpm", "revoked")
    for k in rows:
        table.add_row(k.name, k.hint + "…", ",".join(k.patterns), "yes" if k.admin else "",
                      str(k.rpm or ""), "yes" if k.revoked else "")
    console.print(table)


@app.command()
def revoke(ctx: typer.Context, name: Annotated[str, typer.Argument(help="The key's name.")]) -> None:
    """Revoke a key; a running gateway refuses it within a few seconds."""
    _store(ctx).revoke(name)
    console.print(f"revoked {name}")
