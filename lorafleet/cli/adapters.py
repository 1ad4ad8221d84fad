"""`lorafleet adapters`: the registry from the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from lorafleet.adapter_files import inspect_peft_dir, servability_problems
from lorafleet.base_model import inspect_base
from lorafleet.card import AdapterCard, BaseModelRef, LoraInfo
from lorafleet.cli.common import console, print_json, settings_from
from lorafleet.errors import RegistryError
from lorafleet.refs import parse_ref, validate_name
from lorafleet.registry import AliasTarget, Registry

app = typer.Typer(no_args_is_help=True)
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def _registry(ctx: typer.Context) -> Registry:
    return Registry(settings_from(ctx).registry_dir)


@app.command("list")
def list_(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Every adapter version with its aliases; corrupt entries are shown, not hidden."""
    rows = _registry(ctx).summaries()
    if as_json:
        print_json([r.model_dump(mode="json") for r in rows])
        return
    if not rows:
        console.print("no adapters registered yet (see `lorafleet train` or `lorafleet adapters import`)")
        return
    table = Table("adapter", "version", "aliases", "rank", "base", "source", "created")
    for r in rows:
        if r.error:
            table.add_row(r.name, r.version, ", ".join(r.aliases), "", f"[red]corrupt: {r.error}[/]", "", "")
        else:
            table.add_row(r.name, r.version, ", ".join(r.aliases), str(r.rank), r.base, r.source,
                          (r.created_at or "")[:19])
    console.print(table)


@app.command()
def show(ctx: typer.Context, ref: Annotated[str, typer.Argument(help="name, name@v3 or name@prod")],
         as_json: JsonOpt = False) -> None:
    """The card of one version (a weighted alias shows the version it would pick)."""
    resolved = _registry(ctx).resolve(ref)
    if as_json:
        print_json(resolved.card)
        return
    console.print(f"[bold]{resolved.served_name}[/]  {resolved.path}")
    console.print_json(resolved.card.model_dump_json())


def parse_alias_targets(targets: list[str]) -> AliasTarget:
    """`v3` → "v3"; `v3=0.9 v4=0.1` → {"v3": 0.9, "v4": 0.1}."""
    if len(targets) == 1 and "=" not in targets[0]:
        return targets[0]
    weights: dict[str, float] = {}
    for item in targets:
        version, sep, weight = item.partition("=")
        try:
            if not sep:
                raise ValueError
            weights[version] = float(weight)
        except ValueError:
            raise RegistryError(f"bad alias target {item!r}",
                                hint="give one VERSION, or VERSION=WEIGHT pairs summing to 1") from None
    return weights


@app.command()
def alias(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Adapter name.")],
    alias_name: Annotated[str, typer.Argument(metavar="ALIAS", help="e.g. prod, canary.")],
    targets: Annotated[list[str], typer.Argument(metavar="VERSION[=WEIGHT]...", help="v3, or v3=0.9 v4=0.1")],
) -> None:
    """Point an alias at a version, or split it between versions by weight (canary)."""
    target = parse_alias_targets(targets)
    _registry(ctx).set_alias(name, alias_name, target)
    console.print(f"{name}@{alias_name} → {target}")


@app.command()
def rm(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="name@v3 (one version) or name with --all")],
    all_versions: Annotated[bool, typer.Option("--all", help="Remove every version of the adapter.")] = False,
) -> None:
    """Remove a version (refused while an alias other than latest points at it)."""
    removed = _registry(ctx).remove(ref, all_versions=all_versions)
    console.print(f"removed {parse_ref(ref).name} {', '.join(removed)}")


@app.command("import")
def import_(
    ctx: typer.Context,
    peft_dir: Annotated[Path, typer.Argument(help="A folder written by PEFT's save_pretrained.")],
    name: Annotated[str, typer.Option(help="Adapter name in the registry.")],
    base: Annotated[Path | None, typer.Option(help="Base folder it was trained on (recorded in the card).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Register an existing PEFT LoRA folder as a new immutable version."""
    validate_name(name)
    info = inspect_peft_dir(peft_dir)
    problems = servability_problems(info)
    if problems:
        raise RegistryError(f"{peft_dir}: vLLM cannot serve this adapter: {problems[0]}",
                            hint="retrain or re-save it; see DESIGN.md §5")
    base_ref = BaseModelRef(id=info.base_model)
    if base is not None:
        found = inspect_base(base)
        base_ref = BaseModelRef(id=found.model_id, path=str(found.path), weights_sha256=found.weights_sha256)
    card = AdapterCard(
        name=name, version="v1", source="imported", base=base_ref,
        lora=LoraInfo(rank=info.rank, alpha=info.alpha, target_modules=info.target_modules,
                      dropout=info.config.get("lora_dropout")),
        training={"imported_from": str(Path(peft_dir).resolve())},
    )
    resolved = _registry(ctx).register(name, peft_dir, card)
    if as_json:
        print_json({"name": resolved.name, "version": resolved.version, "path": str(resolved.path)})
        return
    console.print(f"registered [bold]{resolved.served_name}[/] → {resolved.path}")


@app.command()
def merge(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="name, name@v3 or name@prod")],
    out: Annotated[Path, typer.Option(help="New folder for the merged full model.")],
    base: Annotated[Path | None, typer.Option(help="Base folder (default: the one in the card).")] = None,
) -> None:
    """Fold an adapter into its base: a plain HF model that loads and generates without PEFT."""
    from lorafleet.train.merge import merge as merge_adapter

    resolved = _registry(ctx).resolve(ref)
    merge_adapter(resolved, out, base=base)
    console.print(f"merged {resolved.served_name} → {out}")
