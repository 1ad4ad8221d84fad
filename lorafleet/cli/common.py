"""Shared CLI plumbing: settings on the typer context, output helpers."""

from __future__ import annotations

import json
from typing import Any

import typer
from pydantic import BaseModel, ValidationError
from rich.console import Console

from lorafleet.config import Settings
from lorafleet.errors import ConfigError

console = Console()
err_console = Console(stderr=True)


def load_settings(**overrides: object) -> Settings:
    """Settings from LORAFLEET_ env vars with CLI flags on top; bad values are a ConfigError."""
    try:
        return Settings().with_overrides(**overrides)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"setting {field!r}: {err['msg']}", hint=f"check LORAFLEET_{field.upper()}") from None


def settings_from(ctx: typer.Context) -> Settings:
    """The Settings object the root callback put on the context."""
    root = ctx.find_root()
    if not isinstance(root.obj, Settings):
        root.obj = load_settings()
    return root.obj


def print_json(data: Any) -> None:
    """Machine-readable output on stdout (no rich markup, no wrapping)."""
    if isinstance(data, BaseModel):
        text = data.model_dump_json(indent=2)
    elif isinstance(data, list) and data and isinstance(data[0], BaseModel):
        text = json.dumps([d.model_dump(mode="json") for d in data], indent=2)
    else:
        text = json.dumps(data, indent=2, default=str)
    typer.echo(text)


def not_yet(group: str, issue: int) -> typer.Typer:
    """A placeholder group for a part whose issue has not landed yet."""
    app = typer.Typer(help=f"(not available yet: arrives with issue {issue})", no_args_is_help=False)

    @app.callback(invoke_without_command=True)
    def _placeholder() -> None:
        err_console.print(f"[yellow]lorafleet {group}[/] is not available yet (issue {issue}).")
        raise typer.Exit(2)

    return app
