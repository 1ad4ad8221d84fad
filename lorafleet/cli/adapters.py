"""`lorafleet adapters`: the registry from the command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from lorafleet.adapter_files import PeftInfo, check_servable, inspect_peft_dir
from lorafleet.base_model import inspect_base
from lorafleet.base_variants import NF4, folder_variant, is_nf4_twin
from lorafleet.card import AdapterCard, BaseModelRef, LoraInfo, TrainedOn
from lorafleet.cli.card_story import fidelity_line, trained_on_line  # noqa: F401 - re-exported
from lorafleet.cli.common import console, err_console, print_json, settings_from
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
    """One version's story, top to bottom: data (files, hashes, held-out check) → training → fidelity → eval runs
    → forgetting → review → decisions (a weighted alias shows the version it would pick); --json: the same."""
    from lorafleet.cli.card_story import story_json, story_lines
    from lorafleet.promotion.canary_state import load as load_canaries

    registry = _registry(ctx)
    resolved = registry.resolve(ref)
    aliases = registry.aliases(resolved.name)
    canaries = [c.model_dump(mode="json") for c in load_canaries(registry, resolved.name).values()
                if resolved.version in (c.canary, c.stable) and c.state in ("running", "passed")]
    if as_json:
        print_json(story_json(resolved, aliases, canaries))
        return
    for line in story_lines(resolved, aliases, canaries):
        console.print(line, highlight=False, soft_wrap=True)


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
    targets: Annotated[list[str] | None, typer.Argument(metavar="VERSION[=WEIGHT]...",
                                                        help="v3, or v3=0.9 v4=0.1")] = None,
    delete: Annotated[bool, typer.Option("--delete", help="Remove the alias (not `latest`).")] = False,
) -> None:
    """Point an alias at a version, split it between versions by weight (canary), or --delete it."""
    if delete:
        if targets:
            raise RegistryError(f"--delete with versions {' '.join(targets)}",
                                hint=f"lorafleet adapters alias {name} {alias_name} --delete (no versions)")
        _registry(ctx).remove_alias(name, alias_name)
        console.print(f"{name}@{alias_name} deleted")
        return
    if not targets:
        raise RegistryError(f"no version given for {name}@{alias_name}",
                            hint="give VERSION or VERSION=WEIGHT pairs, or --delete")
    target = parse_alias_targets(targets)
    _registry(ctx).set_alias(name, alias_name, target)
    console.print(f"{name}@{alias_name} → {target}")


@app.command()
def rm(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="name@v3 (one version) or name with --all")],
    all_versions: Annotated[bool, typer.Option("--all", help="Remove every version of the adapter.")] = False,
) -> None:
    """Remove a version, or every one with --all (refused while an alias other than latest points at one)."""
    removed = _registry(ctx).remove(ref, all_versions=all_versions)
    console.print(f"removed {parse_ref(ref).name} {', '.join(removed)}")


@app.command()
def promote(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="The exact version: name@v3 (or name@latest).")],
    to: Annotated[str, typer.Option("--to", metavar="ALIAS", help="The alias to move, e.g. prod.")],
    canary: Annotated[float | None, typer.Option(
        "--canary", metavar="PERCENT", help="Send PERCENT of the alias's traffic to it (sticky per user); the "
                                            "gateway watches it against the stable version and rolls it back "
                                            "on a breach.")] = None,
    finish: Annotated[bool, typer.Option("--finish", help="Move a canary that passed its window to 100%.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Promote although evidence is missing or failed "
                                                        "(needs --reason; recorded).")] = False,
    reason: Annotated[str | None, typer.Option("--reason", help="Why (recorded on the decision).")] = None,
    admin_key: Annotated[str | None, typer.Option(
        "--admin-key", envvar="LORAFLEET_ADMIN_KEY", show_default=False,
        help="Decide as this admin key (its name is recorded as who); default: the OS user.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Move an alias to a version only on the evidence its promotion policy asks for; every decision is
    recorded on the card. Refused: each missing or failed item is listed, exit 1, the alias untouched."""
    from lorafleet.cli.promotion_view import print_checks
    from lorafleet.promotion import PromotionRefused, who_am_i
    from lorafleet.promotion import finish as finish_canary
    from lorafleet.promotion import promote as promote_version

    registry = _registry(ctx)
    who = who_am_i(_admin_key_name(ctx, admin_key) if admin_key else None)
    try:
        if finish:
            if canary is not None or force:
                raise RegistryError("--finish takes no --canary or --force",
                                    hint=f"lorafleet adapters promote {ref} --to {to} --finish")
            outcome = finish_canary(registry, ref, to, who=who)
        else:
            outcome = promote_version(registry, ref, to, who=who, canary=canary, force=force, reason=reason)
    except PromotionRefused as exc:
        if as_json and exc.decision is not None:
            print_json(exc.decision.model_dump(mode="json"))
        elif exc.decision is not None and exc.decision.checks:
            print_checks(err_console, f"evidence for {exc.decision.ref} → {to} (policy "
                                      f"{(exc.decision.policy_sha256 or '')[:12]}):", exc.decision.checks)
        raise
    d = outcome.decision
    if as_json:
        print_json(d.model_dump(mode="json"))
        return
    if outcome.checks:
        print_checks(console, f"evidence for {d.ref} → {to} (policy {outcome.policy.source if outcome.policy else '-'}"
                              f", sha256 {(d.policy_sha256 or '')[:12]}):", outcome.checks)
    if d.forced:
        console.print(f"[yellow]forced:[/] {d.reason}", highlight=False)
    if d.kind == "finished":
        console.print(f"{d.ref} finished its canary: {registry_name(d.ref)}@{to} → {d.ref.partition('@')[2]} (100%)",
                      highlight=False)
    elif outcome.canary is not None:
        c = outcome.canary
        console.print(f"{registry_name(d.ref)}@{to} → {c.split} (canary {c.percent:g}% on {c.canary} vs "
                      f"{c.stable}; window {c.window.min_seconds:g} s, {c.window.min_samples} samples per signal)",
                      highlight=False)
    else:
        console.print(f"{registry_name(d.ref)}@{to} → {d.ref.partition('@')[2]} (was {d.previous or 'unset'})",
                      highlight=False)


def _admin_key_name(ctx: typer.Context, plaintext: str) -> str:
    """The name of a valid, unrevoked admin key (the decision's `who`); anything else is refused."""
    from lorafleet.serve.keys import KeyStore

    store = KeyStore(settings_from(ctx).db_url)
    try:
        info = store.verify(plaintext)
    finally:
        store.close()
    if info is None or not info.admin:
        raise RegistryError("--admin-key is not a valid admin key", hint="create one: lorafleet keys create --admin")
    return info.name


def registry_name(ref: str) -> str:
    return ref.partition("@")[0]


@app.command()
def policy(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Adapter name.")],
    set_: Annotated[Path | None, typer.Option("--set", metavar="FILE", help="Validate FILE and make it the "
                                                                           "policy of NAME.")] = None,
    default: Annotated[bool, typer.Option("--default", help="Print the built-in default policy.")] = False,
    show_: Annotated[bool, typer.Option("--show", help="Print the policy in force (the default action).")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Show or set the promotion policy of an adapter name (YAML in the registry; the default when none)."""
    from lorafleet.promotion.policy import DEFAULT_POLICY, load_policy, set_policy

    registry = _registry(ctx)
    if default:
        typer.echo(DEFAULT_POLICY, nl=False)
        return
    loaded = set_policy(registry, name, set_) if set_ is not None else load_policy(registry, name)
    if set_ is None:
        registry.versions(name)
    if as_json:
        print_json({"name": name, "source": loaded.source, "sha256": loaded.sha256,
                    "policy": loaded.policy.model_dump(mode="json")})
        return
    verb = "set" if set_ is not None else "in force"
    err_console.print(f"# policy of {name} {verb}: {loaded.source} (sha256 {loaded.sha256[:12]})", highlight=False)
    typer.echo(loaded.text, nl=False)


@app.command("import")
def import_(
    ctx: typer.Context,
    peft_dir: Annotated[Path, typer.Argument(help="A folder written by PEFT's save_pretrained.")],
    name: Annotated[str, typer.Option(help="Adapter name in the registry.")],
    base: Annotated[Path | None, typer.Option(
        help="Base folder it is served on and checked against (default: the configured base, else its "
             "adapter_config's local base).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Register although the fidelity check fails "
                                                        "(recorded on the card).")] = False,
    skip_fidelity: Annotated[bool, typer.Option("--skip-fidelity", help="Register without the engine check "
                                                                        "(recorded on the card).")] = False,
    engine_url: Annotated[str | None, typer.Option(
        help="A running vLLM to check in [LORAFLEET_ENGINE_URL; its key only from LORAFLEET_ENGINE_API_KEY]; "
             "default: start one for the check.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Register an existing PEFT LoRA folder as a new immutable version, after the servability checks and the
    fidelity check (served by the engine vs HF + PEFT)."""
    from lorafleet.cli.engine_session import EngineSettings

    validate_name(name)
    info = inspect_peft_dir(peft_dir)
    settings = EngineSettings.from_core(settings_from(ctx)).with_overrides(engine_url=engine_url)
    base_dir = import_base(base, info, settings.base_dir)
    # Before any engine: what vLLM would refuse or ignore, against the base's files when there is one.
    check_servable(info, max_lora_rank=settings.max_lora_rank, base_dir=base_dir)
    if base_dir is None and not skip_fidelity:
        raise RegistryError(f"{peft_dir}: no base to check this adapter against ({info.base_model} is not a "
                            f"local folder and {settings.base_dir} does not exist)",
                            hint="pass --base DIR (the base it is served on), or run `lorafleet base prepare`")
    base_ref, trained_on = BaseModelRef(id=info.base_model), None
    if base_dir is not None:
        base_ref, trained_on = imported_base(base_dir)
    if skip_fidelity:
        fidelity = {"skipped": "--skip-fidelity"}
    else:
        from lorafleet.cli.fidelity import check_fidelity

        fidelity = check_fidelity(peft_dir, base_dir, settings, force=force, what=str(peft_dir),
                                  probes_source="fixed probes", console=err_console).model_dump()
    card = AdapterCard(
        name=name, version="v1", source="imported", base=base_ref,
        lora=LoraInfo(rank=info.rank, alpha=info.alpha, target_modules=info.target_modules,
                      dropout=info.config.get("lora_dropout"),
                      quantization=NF4 if trained_on is not None and trained_on.variant == NF4 else None),
        trained_on=trained_on, training={"imported_from": str(Path(peft_dir).resolve())}, fidelity=fidelity,
    )
    resolved = _registry(ctx).register(name, peft_dir, card)
    if as_json:
        print_json({"name": resolved.name, "version": resolved.version, "path": str(resolved.path)})
        return
    console.print(f"registered [bold]{resolved.served_name}[/] → {resolved.path}")
    if fidelity.get("forced"):
        console.print("[yellow]warning:[/] registered although the fidelity check failed (--force)")


def import_base(given: Path | None, info: PeftInfo, configured: Path) -> Path | None:
    """The base an imported adapter is checked on: --base, else its adapter_config's base when that is a local
    nf4 twin (trained on it: served on it), else the one served (configured/embedded), else its adapter_config's
    base when that is a local folder."""
    if given is not None:
        return given
    named = Path(info.base_model)
    if is_nf4_twin(named):
        return named
    for candidate in (configured, named):
        if (candidate / "config.json").is_file():
            return candidate
    return None


def imported_base(base_dir: Path) -> tuple[BaseModelRef, TrainedOn]:
    """The card's base and trained_on for an adapter checked on `base_dir`: on an nf4 twin, the base it was made
    from and the twin (as `train` records a QLoRA run); else that base, full, with its weights' sha256."""
    found = inspect_base(base_dir)
    trained_on = folder_variant(base_dir, weights_sha256=found.weights_sha256)
    made_from = found.manifest.derived_from if found.manifest is not None else None
    if trained_on.variant == NF4 and made_from is not None:
        return BaseModelRef(id=found.model_id, path=made_from.path, weights_sha256=made_from.weights_sha256), trained_on
    return BaseModelRef(id=found.model_id, path=str(found.path), weights_sha256=found.weights_sha256), trained_on


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


@app.command()
def monitor(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="name (every version with traffic), name@v3 or name@prod")],
    gateway: Annotated[str, typer.Option(envvar="LORAFLEET_GATEWAY_URL",
                                         help="The gateway whose /metrics is read.")] = "http://127.0.0.1:8000",
    metrics_token: Annotated[str | None, typer.Option(envvar="LORAFLEET_METRICS_TOKEN",
                                                      help="Bearer token for /metrics, if it needs one.")] = None,
    watch: Annotated[bool, typer.Option("--watch", help="Refresh until Ctrl-C, with the change since the "
                                                        "first reading.")] = False,
    interval: Annotated[float, typer.Option(min=0.5, help="--watch: seconds between readings.")] = 5.0,
    as_json: JsonOpt = False,
) -> None:
    """Live drift of an adapter's versions at the gateway: prompts far from the training data, prompt-length
    distance, output length and INVALID labels against the latest eval run, review grades of captured samples."""
    import time

    from lorafleet.cli.monitor import fetch_metrics, parse_drift

    parsed = parse_ref(ref)
    versions = _monitored_versions(ctx, parsed)
    first: dict[str, object] | None = None
    while True:
        rows = parse_drift(fetch_metrics(gateway, metrics_token), parsed.name, versions)
        if as_json:
            data = [r.model_dump(mode="json") for r in rows]
            typer.echo(json.dumps(data) if watch else json.dumps(data, indent=2))
        else:
            if watch:
                console.clear()
            _show_drift(ref, gateway, rows, first)
        first = first or {r.version: r for r in rows}
        if not watch:
            return
        time.sleep(interval)


def _monitored_versions(ctx: typer.Context, parsed) -> set[str] | None:  # noqa: ANN001 - AdapterRef
    """None (every version) for a bare name; the version, or an alias's versions from the local registry."""
    if parsed.selector is None:
        return None
    if parsed.is_version:
        return {parsed.selector}
    target = _registry(ctx).aliases(parsed.name).get(parsed.alias)
    if target is None:
        raise RegistryError(f"{parsed.name} has no alias {parsed.alias!r} in this registry",
                            hint=f"pass {parsed.name} (every version) or {parsed.name}@vN")
    return {target} if isinstance(target, str) else set(target)


def _show_drift(ref: str, gateway: str, rows, first) -> None:  # noqa: ANN001 - VersionDrift rows
    """A table per version: each measure, its change since the first reading (--watch), its alert threshold."""
    if not rows:
        console.print(f"no drift data for {ref} at {gateway} yet: no traffic to it since the gateway started "
                      "(or LORAFLEET_DRIFT=0 there)", highlight=False)
        return
    for r in rows:
        console.print(_drift_table(r, (first or {}).get(r.version), gateway))
        if r.drift:
            console.print(f"[red]{r.ref} drifts:[/] {', '.join(r.drift)}", highlight=False)


def _drift_table(r, was, gateway: str) -> Table:  # noqa: ANN001 - VersionDrift now and at the first reading
    from lorafleet.cli import monitor as mon

    small = r.requests < mon.MIN_WINDOW
    lo, hi = mon.OUTPUT_RATIO_RANGE
    base = "-" if r.eval_invalid_rate is None else f"{r.eval_invalid_rate:.0%}"
    measures = [("prompts far from training data", "input_far_share", ".0%", f"> {mon.FAR_SHARE_MAX:.0%}",
                 "input far from training data"),
                ("prompt length distance (KS)", "input_length_distance", ".2f", f"> {mon.LENGTH_KS_MAX:.2f}",
                 "prompt lengths"),
                ("output length / eval run's", "output_length_ratio", ".2f", f"< {lo:g} or > {hi:g}", "output length")]
    if r.output_invalid_rate is not None or r.eval_invalid_rate is not None:
        measures.append(("INVALID labels", "output_invalid_rate", ".0%",
                         f"> eval {base} + {mon.INVALID_EXCESS_MAX:.0%}", "INVALID labels"))
    title = f"{r.ref}: last {r.requests} requests at {gateway}" + (
        f" (under {mon.MIN_WINDOW}: too few to alert)" if small else "")
    table = Table("measure", "now", "alert when", "", title=title, title_justify="left")
    for measure, field, fmt, when, flag in measures:
        value, before = getattr(r, field), getattr(was, field) if was is not None else None
        if value is None:
            now = "[dim]not measured[/]"
        else:
            now = format(value, fmt)
            if before is not None and abs(value - before) >= 0.005:
                now += f" ({'↑' if value > before else '↓'}{format(abs(value - before), fmt)})"
        status = "" if value is None or small else ("[red]DRIFT[/]" if flag in r.drift else "[green]ok[/]")
        table.add_row(measure, now, when, status)
    for criterion, mean in sorted(r.review_grade_mean.items()):
        table.add_row(f"review grade: {criterion}", f"{mean:.2f} (n={r.review_grades})", "", "")
    return table
