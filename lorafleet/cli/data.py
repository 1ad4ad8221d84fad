"""`lorafleet data`: check, split, convert, fix and augment datasets (thin layer over lorafleet.train.data)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from lorafleet.cli.common import console, print_json, settings_from
from lorafleet.errors import ConfigError

app = typer.Typer(no_args_is_help=True)
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def _tokenizer(ctx: typer.Context, tokenizer_dir: Path | None) -> tuple[Any, str]:
    """The base's tokenizer when one is available (token counts), else whitespace words."""
    folder = tokenizer_dir or settings_from(ctx).base_dir
    if not (folder / "tokenizer.json").is_file() and not (folder / "tokenizer_config.json").is_file():
        if tokenizer_dir is not None:
            raise ConfigError(f"--tokenizer {tokenizer_dir}: no tokenizer files there",
                              hint="give a HF model folder, or leave it out to count words")
        return None, "whitespace"
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder), str(folder)


def _say(text: str) -> None:
    """One line printed in full whatever the width (no wrapping, no markup from the data)."""
    console.print(text, highlight=False, markup=False, soft_wrap=True)


def _role_files(train: list[Path] | None, val: list[Path] | None, test: list[Path] | None,
                files: list[Path] | None) -> tuple[list[Path], dict[str, str]]:
    """Every file once, and the role of each file given as --train/--val/--test."""
    roles: dict[str, str] = {}
    for role, given in (("train", train), ("val", val), ("test", test)):
        for path in given or []:
            if roles.get(str(path), role) != role:
                raise ConfigError(f"{path} is given as both --{roles[str(path)]} and --{role}",
                                  hint="a file has one role")
            roles[str(path)] = role
    paths = list(dict.fromkeys([*(Path(p) for p in roles), *(files or [])]))
    if not paths:
        raise ConfigError("no files to check", hint="give files, e.g. --train train.jsonl --val val.jsonl")
    return paths, roles


@app.command()
def check(
    ctx: typer.Context,
    files: Annotated[list[Path] | None, typer.Argument(
        help="JSONL files without a role (never compared for leakage with each other).")] = None,
    train: Annotated[list[Path] | None, typer.Option("--train", help="Training file (repeatable).")] = None,
    val: Annotated[list[Path] | None, typer.Option(
        "--val", help="Validation file (repeatable); it is added to the held-out index.")] = None,
    test: Annotated[list[Path] | None, typer.Option(
        "--test", help="Test file (repeatable); it is added to the held-out index.")] = None,
    max_length: Annotated[int, typer.Option(help="Tokens a training example may have.")] = 512,
    near_dup_threshold: Annotated[float, typer.Option(help="MinHash Jaccard from which records are near-dups.",
                                                      min=0.1, max=1.0)] = 0.8,
    tokenizer: Annotated[Path | None, typer.Option(help="HF folder whose tokenizer counts tokens "
                                                         "(default: the base model's).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Schema, roles, empty turns, dups, near-dups, leakage, held-out matches, labels, balance, lengths, PII,
    agreement. Leakage is between splits: --train/--val/--test, or a record's own `split:` field."""
    from lorafleet.heldout import HeldOutIndex
    from lorafleet.train.data.checks import check_files

    paths, roles = _role_files(train, val, test, files)
    index = HeldOutIndex(settings_from(ctx).data_dir)
    for path, role in roles.items():
        if role in ("val", "test") and Path(path).is_file():
            index.add_file(Path(path), role)  # told it is held out: from now on nothing may train on it
    tok, tok_name = _tokenizer(ctx, tokenizer)
    report = check_files(paths, roles=roles, index=index, max_length=max_length, tokenizer=tok,
                         near_threshold=near_dup_threshold, tokenizer_name=tok_name)
    if as_json:
        print_json({**report.model_dump(mode="json"), "ok": report.ok})
    else:
        _print_report(report, roles)
    raise typer.Exit(0 if report.ok else 1)


def _print_report(report: Any, roles: dict[str, str]) -> None:
    """A table in a terminal (cells fold, never cut); one plain line per file and finding elsewhere (CI logs)."""
    plain = not console.is_terminal
    if plain:
        for f in report.files:
            labels = ", ".join(f"{k}:{v}" for k, v in sorted(f.labels.items())[:12])
            _say(f"file {f.path} ({roles.get(f.path, 'no role')}): {f.records} records, format {f.format or '-'}"
                 + (f", labels {labels}" if labels else ""))
    else:
        table = Table("file", "role", "records", "format", "labels")
        table.columns[0].overflow = "fold"
        for f in report.files:
            labels = ", ".join(f"{k}:{v}" for k, v in sorted(f.labels.items())[:12])
            table.add_row(escape(f.path), roles.get(f.path, "-"), str(f.records), f.format or "-", labels)
        console.print(table)
    if report.lengths:
        s = report.lengths
        _say(f"tokens ({s.tokenizer}): p50 {s.p50}  p95 {s.p95}  p99 {s.p99}  max {s.max}  "
             f"over --max-length {s.max_length}: {s.over}")
    for pair, k in report.kappa.items():
        _say(f"Cohen's kappa {pair}: {k:.3f}")
    if report.issues and plain:
        for i in report.issues:
            _say(f"{i.severity} {i.code} {i.where}: {i.message}" if i.where else f"{i.severity} {i.code}: {i.message}")
    elif report.issues:
        issues = Table("severity", "check", "where", "message")
        issues.columns[2].overflow = "fold"
        issues.columns[3].overflow = "fold"
        for i in report.issues:
            colour = "red" if i.severity == "error" else "yellow"
            issues.add_row(f"[{colour}]{i.severity}[/]", i.code, escape(i.where), escape(i.message))
        console.print(issues)
    if report.heldout_version:
        _say(f"held-out index {report.heldout_version}: "
             f"{sum(1 for i in report.issues if i.code == 'held_out')} match(es)")
    _say(f"{len(report.errors)} errors, {len(report.warnings)} warnings")


AllowHeldOut = Annotated[bool, typer.Option("--allow-held-out",
                                            help="Keep records that match held-out examples (reported).")]


@app.command()
def split(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="One JSONL file to split.")],
    out: Annotated[Path, typer.Option(help="Folder for train/val/test.jsonl.")],
    ratios: Annotated[str, typer.Option(help="train,val,test fractions.")] = "0.8,0.1,0.1",
    near_dup_threshold: Annotated[float, typer.Option(min=0.1, max=1.0)] = 0.8,
    allow_held_out: AllowHeldOut = False,
    as_json: JsonOpt = False,
) -> None:
    """Deterministic split by content hash; near-duplicates stay on one side, paraphrases follow their
    source (dropped when it is val/test); val/test join the held-out index."""
    from lorafleet.heldout import HeldOutIndex
    from lorafleet.train.data.split import parse_ratios, split_file

    index = HeldOutIndex(settings_from(ctx).data_dir)
    result = split_file(file, out, parse_ratios(ratios), near_dup_threshold, index=index,
                        allow_held_out=allow_held_out)
    if as_json:
        print_json(result)
        return
    for line in result.skipped:
        _say(f"skipped {line}")
    if result.heldout_note:
        _say(f"warning: {result.heldout_note}")
    for line in result.held_out_allowed:
        _say(f"warning: --allow-held-out: {line}")
    if result.dropped_augmented:
        _say(f"dropped {len(result.dropped_augmented)} augmented record(s) whose source is in val/test "
             f"(first: {result.dropped_augmented[0]})")
    _say(" ".join(f"{k}: {v}" for k, v in result.counts.items()) + f"  → {out}")


@app.command()
def convert(
    file: Annotated[Path, typer.Argument(help="JSONL in any of the three formats.")],
    out: Annotated[Path, typer.Option(help="Output JSONL.")],
    to: Annotated[str, typer.Option(help="chat, alpaca or prompt_completion.")],
) -> None:
    """Convert between chat, alpaca and prompt/completion (extra fields such as label are kept)."""
    from lorafleet.formats import FORMATS
    from lorafleet.train.data.convert import convert_file

    if to not in FORMATS:
        raise ConfigError(f"--to {to!r} is not a format", hint=f"use one of {', '.join(FORMATS)}")
    n = convert_file(file, out, to)  # type: ignore[arg-type]
    console.print(f"wrote {n} {to} records → {out}")


@app.command()
def fix(
    file: Annotated[Path, typer.Argument(help="JSONL to fix (left untouched).")],
    out: Annotated[Path, typer.Option(help="Fixed JSONL; a <out>.report.json lists every change.")],
    dedup: Annotated[bool, typer.Option(help="Drop exact duplicates.")] = True,
    labels: Annotated[bool, typer.Option(help="Rewrite label variants to the most common spelling.")] = True,
    as_json: JsonOpt = False,
) -> None:
    """Mechanical fixes: drop broken lines, empty turns, exact dups; unify label spellings."""
    from lorafleet.train.data.fix import fix_file

    report = fix_file(file, out, dedup=dedup, labels=labels)
    if as_json:
        print_json(report)
        return
    for c in report.changes:
        _say(f"{c.where}: {c.action} ({c.detail})")
    _say(f"kept {report.kept} records, {len(report.changes)} changes → {out}")


@app.command()
def augment(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="Training JSONL to paraphrase.")],
    out: Annotated[Path, typer.Option(help="Output JSONL: the originals plus the new records.")],
    endpoint: Annotated[str, typer.Option(help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1")],
    model: Annotated[str, typer.Option(help="Model name at the endpoint.")],
    n: Annotated[int, typer.Option(help="Paraphrases per record.", min=1, max=20)] = 1,
    api_key: Annotated[str | None, typer.Option(envvar="LORAFLEET_AUGMENT_API_KEY", help="Bearer key.")] = None,
    limit: Annotated[int | None, typer.Option(help="Augment only the first N records.")] = None,
    role: Annotated[str | None, typer.Option(help="The input's split (train, val or test); val/test are "
                                                  "refused.")] = None,
    allow_held_out: AllowHeldOut = False,
) -> None:
    """Paraphrase user turns through any OpenAI endpoint; each new record carries its provenance.
    Records that match the held-out index are refused."""
    from lorafleet.heldout import HeldOutIndex
    from lorafleet.train.data.augment import augment_file

    if role is not None and role not in ("train", "val", "test"):
        raise ConfigError(f"--role {role!r} is not a split", hint="use train, val or test")
    index = HeldOutIndex(settings_from(ctx).data_dir)
    added = augment_file(file, out, endpoint=endpoint, model=model, n=n, api_key=api_key, limit=limit,
                         role=role, index=index, allow_held_out=allow_held_out, warn=lambda m: _say(f"warning: {m}"))
    if index.note:
        _say(f"warning: {index.note}")
    _say(f"added {added} augmented records → {out}")
