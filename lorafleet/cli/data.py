"""`lorafleet data`: check, split, convert, fix and augment datasets (thin layer over lorafleet.train.data)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
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


@app.command()
def check(
    ctx: typer.Context,
    files: Annotated[list[Path], typer.Argument(help="JSONL files; name them train/val/test to check leakage.")],
    max_length: Annotated[int, typer.Option(help="Tokens a training example may have.")] = 512,
    near_dup_threshold: Annotated[float, typer.Option(help="MinHash Jaccard from which records are near-dups.",
                                                      min=0.1, max=1.0)] = 0.8,
    tokenizer: Annotated[Path | None, typer.Option(help="HF folder whose tokenizer counts tokens "
                                                         "(default: the base model's).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Schema, roles, empty turns, dups, near-dups, leakage, labels, balance, lengths, PII, agreement."""
    from lorafleet.train.data.checks import check_files

    tok, tok_name = _tokenizer(ctx, tokenizer)
    report = check_files(files, max_length=max_length, tokenizer=tok, near_threshold=near_dup_threshold,
                         tokenizer_name=tok_name)
    if as_json:
        print_json({**report.model_dump(mode="json"), "ok": report.ok})
    else:
        _print_report(report)
    raise typer.Exit(0 if report.ok else 1)


def _print_report(report: Any) -> None:
    table = Table("file", "records", "format", "labels")
    for f in report.files:
        labels = ", ".join(f"{k}:{v}" for k, v in sorted(f.labels.items())[:12])
        table.add_row(f.path, str(f.records), f.format or "-", labels)
    console.print(table)
    if report.lengths:
        s = report.lengths
        console.print(f"tokens ({s.tokenizer}): p50 {s.p50}  p95 {s.p95}  p99 {s.p99}  max {s.max}  "
                      f"over --max-length {s.max_length}: {s.over}")
    for pair, k in report.kappa.items():
        console.print(f"Cohen's kappa {pair}: {k:.3f}")
    if report.issues:
        issues = Table("severity", "check", "where", "message")
        for i in report.issues:
            colour = "red" if i.severity == "error" else "yellow"
            issues.add_row(f"[{colour}]{i.severity}[/]", i.code, i.where, i.message)
        console.print(issues)
    console.print(f"{len(report.errors)} errors, {len(report.warnings)} warnings")


@app.command()
def split(
    file: Annotated[Path, typer.Argument(help="One JSONL file to split.")],
    out: Annotated[Path, typer.Option(help="Folder for train/val/test.jsonl.")],
    ratios: Annotated[str, typer.Option(help="train,val,test fractions.")] = "0.8,0.1,0.1",
    near_dup_threshold: Annotated[float, typer.Option(min=0.1, max=1.0)] = 0.8,
    as_json: JsonOpt = False,
) -> None:
    """Deterministic split by content hash; near-duplicates stay on one side."""
    from lorafleet.train.data.split import parse_ratios, split_file

    result = split_file(file, out, parse_ratios(ratios), near_dup_threshold)
    if as_json:
        print_json(result)
    else:
        for line in result.skipped:
            console.print(f"[yellow]skipped[/] {line}", highlight=False)
        console.print(" ".join(f"{k}: {v}" for k, v in result.counts.items()) + f"  → {out}")


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
        console.print(f"{c.where}: {c.action} ({c.detail})", highlight=False)
    console.print(f"kept {report.kept} records, {len(report.changes)} changes → {out}")


@app.command()
def augment(
    file: Annotated[Path, typer.Argument(help="Training JSONL to paraphrase.")],
    out: Annotated[Path, typer.Option(help="Output JSONL: the originals plus the new records.")],
    endpoint: Annotated[str, typer.Option(help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1")],
    model: Annotated[str, typer.Option(help="Model name at the endpoint.")],
    n: Annotated[int, typer.Option(help="Paraphrases per record.", min=1, max=20)] = 1,
    api_key: Annotated[str | None, typer.Option(envvar="LORAFLEET_AUGMENT_API_KEY", help="Bearer key.")] = None,
    limit: Annotated[int | None, typer.Option(help="Augment only the first N records.")] = None,
) -> None:
    """Paraphrase user turns through any OpenAI endpoint; each new record carries its provenance."""
    from lorafleet.train.data.augment import augment_file

    added = augment_file(file, out, endpoint=endpoint, model=model, n=n, api_key=api_key, limit=limit)
    console.print(f"added {added} augmented records → {out}")
