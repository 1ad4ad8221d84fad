"""`lorafleet train`: train a LoRA/QLoRA adapter and register it (thin layer over lorafleet.train.recipe).

    lorafleet train --train data/train.jsonl --val data/val.jsonl --name support-intents [--qlora]
    lorafleet train --config examples/train/support-intents.yaml [--max-steps 20]
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from lorafleet.cli.common import console, err_console, print_json, settings_from
from lorafleet.errors import ConfigError

app = typer.Typer(no_args_is_help=False)


@app.callback(invoke_without_command=True)
def train(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Option(help="YAML holding the same fields as the flags.")] = None,
    base: Annotated[Path | None, typer.Option(help="Base HF folder (default: the embedded base).")] = None,
    train_file: Annotated[Path | None, typer.Option("--train", help="Training JSONL.")] = None,
    val: Annotated[Path | None, typer.Option(help="Validation JSONL (early stopping; never trained on).")] = None,
    name: Annotated[str | None, typer.Option(help="Adapter name in the registry.")] = None,
    qlora: Annotated[bool | None, typer.Option("--qlora/--no-qlora", help="4-bit nf4 base (bitsandbytes).")] = None,
    rank: Annotated[int | None, typer.Option(help="LoRA rank: 8 or 16 (what vLLM serves here).")] = None,
    alpha: Annotated[float | None, typer.Option(help="LoRA alpha (default 2 × rank).")] = None,
    target_modules: Annotated[str | None, typer.Option(
        help="Comma-separated, e.g. q_proj,k_proj,v_proj,o_proj.")] = None,
    epochs: Annotated[float | None, typer.Option(help="Passes over the training data.")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Stop after N optimiser steps (overrides --epochs).")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Examples per step.")] = None,
    max_length: Annotated[int | None, typer.Option(help="Tokens per example.")] = None,
    gradient_checkpointing: Annotated[bool | None, typer.Option(
        "--gradient-checkpointing/--no-gradient-checkpointing",
        help="Recompute activations in backward: much less memory on big bases, ~30% slower.")] = None,
    precision: Annotated[str | None, typer.Option(
        help="auto | fp32 | bf16: auto is bf16 on a CUDA GPU that has it, else fp32 (CPU); bf16 also on a "
             "CPU with native bf16 (AVX512-BF16/AMX).")] = None,
    padding_free: Annotated[bool | None, typer.Option(
        "--padding-free/--no-padding-free",
        help="Batches as one row without pad tokens (attention stays inside each example).")] = None,
    group_by_length: Annotated[bool | None, typer.Option(
        "--group-by-length/--no-group-by-length", help="Batch examples of similar length together.")] = None,
    packing: Annotated[bool | None, typer.Option(
        "--packing/--no-packing", help="Pack several examples per max-length row (TRL bfd): more per step.")] = None,
    threads: Annotated[int | None, typer.Option(help="torch intra-op threads (default: torch's own).")] = None,
    dataloader_workers: Annotated[int | None, typer.Option(help="Batch-collating processes (0: in-process).")] = None,
    serving_check: Annotated[bool | None, typer.Option(
        "--serving-check/--no-serving-check",
        help="QLoRA: also measure the adapter as served (a second, full-precision copy of the base).")] = None,
    on_overlong: Annotated[str | None, typer.Option(help="drop | truncate | error for longer examples.")] = None,
    allow_leakage: Annotated[bool | None, typer.Option(
        "--allow-leakage", help="Train although val rows are in train.")] = None,
    allow_held_out: Annotated[bool | None, typer.Option(
        "--allow-held-out", help="Train although records match held-out (val/test/eval/review) examples; "
                                 "recorded on the card.")] = None,
    eval_steps: Annotated[int | None, typer.Option(help="Validate and checkpoint every N steps.")] = None,
    patience: Annotated[int | None, typer.Option(help="Early stopping patience (evaluations).")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    resume: Annotated[bool | None, typer.Option(
        "--resume", help="Continue the latest run of --name from its last checkpoint (same config, same MLflow run).")
    ] = None,
    samples: Annotated[int | None, typer.Option(help="Side-by-side generations printed at the end.")] = None,
    forgetting: Annotated[bool | None, typer.Option(
        "--forgetting/--no-forgetting", help="Measure forgetting on general prompts (a subset of "
        "examples/forgetting) in the registration engine, with the fidelity check; on the card "
        "[LORAFLEET_FORGETTING_CHECK].")] = None,
    force: Annotated[bool, typer.Option("--force", help="Register although the fidelity check (served vs "
                                                        "trained) fails; recorded on the card.")] = False,
    skip_fidelity: Annotated[bool, typer.Option("--skip-fidelity", help="Register without the fidelity check "
                                                                        "(recorded on the card).")] = False,
    no_track: Annotated[bool, typer.Option("--no-track", help="Do not log to MLflow.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Train a LoRA/QLoRA adapter with TRL SFTTrainer + PEFT, check it is servable, register it."""
    if ctx.invoked_subcommand is not None:
        return
    from lorafleet.train.config import build_config, load_config
    from lorafleet.train.recipe import train as run
    from lorafleet.train.settings import TrainSettings

    flags: dict[str, Any] = {
        "base": base, "train": train_file, "val": val, "name": name, "qlora": qlora, "rank": rank, "alpha": alpha,
        "target_modules": target_modules.split(",") if target_modules else None, "epochs": epochs,
        "max_steps": max_steps, "lr": lr, "batch_size": batch_size, "max_length": max_length,
        "gradient_checkpointing": gradient_checkpointing, "precision": precision, "serving_check": serving_check,
        "padding_free": padding_free, "group_by_length": group_by_length, "packing": packing, "threads": threads,
        "dataloader_workers": dataloader_workers,
        "on_overlong": on_overlong, "allow_leakage": allow_leakage, "allow_held_out": allow_held_out,
        "eval_steps": eval_steps,
        "patience": patience, "seed": seed, "resume": resume, "samples": samples,
        "track": False if no_track else None,
    }
    if config is not None:
        cfg = load_config(config, flags)
    else:
        missing = [f"--{k}" for k in ("train", "name") if flags[k] is None]
        if missing:
            raise ConfigError(f"missing {' and '.join(missing)}", hint="or pass --config train.yaml")
        cfg = build_config({k: v for k, v in flags.items() if v is not None})
    from lorafleet.cli.train_checks import registration_checks

    checks = registration_checks(settings_from(ctx), force=force, skip=skip_fidelity, console=err_console,
                                 forgetting=forgetting)
    result = run(cfg, TrainSettings.from_core(settings_from(ctx)), console=err_console, show_progress=not as_json,
                 checks=checks)
    if result is None:  # not the main process of a multi-process run: the main one reports
        return
    if as_json:
        print_json(result)
        return
    show_result(result)


def show_result(result: Any) -> None:
    """Val loss base vs adapter, and the sample generations side by side."""
    where = f"{result.name}@{result.version}" if result.version else result.adapter_dir
    console.print(f"[bold]{where}[/]  {result.steps} steps, best step {result.best_step}, "
                  f"{result.wall_time_s:.0f} s, peak RSS {result.peak_rss_mb:.0f} MB, {result.tokens_per_s:.0f} tok/s")
    if result.val_loss is not None:
        console.print(f"val loss: base {result.base_val_loss:.3f} → adapter {result.val_loss:.3f}")
    if result.serving_val_loss is not None:
        where_served = result.trained_on.path if result.trained_on else "the full-precision base"
        console.print(f"val loss as served (adapter on its nf4 twin {where_served}): {result.serving_val_loss:.3f}")
        if result.serving_val_loss > 2 * result.val_loss + 0.1:
            console.print("[yellow]warning:[/] served, the adapter scores much worse than trained; "
                          "check its fidelity on the card")
    if result.samples:
        table = Table("prompt", "reference", "base", "adapter", show_lines=True)
        for s in result.samples:
            table.add_row(s.prompt, s.reference, s.base, s.adapter)
        console.print(table)
    if result.held_out.get("matches"):
        console.print(f"[yellow]held-out guard:[/] {result.held_out['matches']} training record(s) match held-out "
                      "examples (--allow-held-out; recorded on the card)")
    console.print(f"run folder {result.run_dir}")
    if result.mlflow_run_id:
        console.print(f"MLflow run {result.mlflow_run_id}")
