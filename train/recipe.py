"""The training recipe, top to bottom: setup → data → fit → check → register.

    from lorafleet.train.recipe import train
    result = train(TrainConfig(name="support-intents", train=Path("…/train.jsonl"), val=…), settings)

TRL `SFTTrainer` + PEFT LoRA (QLoRA: bitsandbytes nf4), loss on the answer tokens only
(conversational prompt/completion rows + `completion_only_loss`), early stopping on val loss
with the best checkpoint kept, MLflow in the local store, resumable checkpoints.
"""

from __future__ import annotations

import resource
import shutil
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lorafleet.train import dataset
from lorafleet.train.card import build_card
from lorafleet.train.config import TrainConfig
from lorafleet.train.efficacy import Sample, base_val_loss, serving_model, side_by_side, val_loss_of
from lorafleet.train.model import CHECKPOINTING_KWARGS, check_base, load_base, load_tokenizer, lora_config, on_cpu
from lorafleet.train.servable import check_saved_adapter, check_targets, module_names
from lorafleet.train.tracking import Tracker
from pydantic import BaseModel
from rich.console import Console

from lorafleet.base_model import inspect_base
from lorafleet.config import Settings
from lorafleet.errors import ConfigError, RegistryError
from lorafleet.fsutil import atomic_write_json
from lorafleet.registry import Registry


class TrainResult(BaseModel):
    """What a run produced; `version` is None when registration was switched off."""

    name: str
    version: str | None
    adapter_dir: str
    registry_path: str | None
    steps: int
    best_step: int | None
    train_loss_first: float | None
    train_loss_last: float | None
    val_loss: float | None
    base_val_loss: float | None
    serving_val_loss: float | None = None
    processes: int = 1  # data-parallel processes (torchrun/accelerate launch); the global batch is batch_size × this
    examples: int
    dropped_overlong: int
    wall_time_s: float
    peak_rss_mb: float
    cpu_time_s: float
    tokens_per_s: float
    mlflow_run_id: str | None
    samples: list[Sample]


def train(config: TrainConfig, settings: Settings, *, console: Console | None = None, show_progress: bool = True,
          fail_before_rename: Callable[[], None] | None = None) -> TrainResult | None:
    """Train one adapter and register it as a new immutable version (see the module docstring).

    Under `torchrun`/`accelerate launch` every process trains its share of each batch; only the main
    process clears the run folder, tracks, saves and registers, and the others return None."""
    console = console or Console(stderr=True)
    started = time.perf_counter()
    base = Path(config.base or settings.base_dir)
    check_base(base)
    tokenizer = load_tokenizer(base)
    train_ex, val_ex, dropped = load_examples(config, tokenizer)
    run_dir = settings.data_dir / "runs" / config.name

    import torch
    from accelerate import PartialState
    from peft import get_peft_model

    # One process unless a launcher (torchrun, accelerate launch) started several; on a machine
    # without an accelerator accelerate only forms a CPU (gloo) group when told it is on CPU.
    processes = PartialState(cpu=on_cpu())
    main = processes.is_main_process
    with processes.main_process_first():
        checkpoint = start_run_dir(run_dir, config, clean=main)

    torch.manual_seed(config.seed)
    model = load_base(base, qlora=config.qlora, gradient_checkpointing=config.gradient_checkpointing)
    base_names = module_names(model)
    check_targets(config.target_modules, base_names)
    model = get_peft_model(model, lora_config(config))

    tracker = Tracker(settings.data_dir / "mlflow" if config.track and main else None, run_name=config.name)
    try:
        tracker.params({**config.hyperparameters(), "train": str(config.train), "val": str(config.val),
                        "base": str(base)})
        trainer, progress = build_trainer(config, model, tokenizer, train_ex, val_ex, run_dir, tracker,
                                          console, show_progress and main)
        trainer.train(resume_from_checkpoint=checkpoint)
        # Evaluations are collective under a process group: every process takes part in each one.
        val_loss = final_val_loss(trainer) if val_ex else None
        base_loss = base_val_loss(trainer)
        adapter_dir = run_dir / "adapter"
        if main:
            save_adapter(trainer.model, adapter_dir)
        processes.wait_for_everyone()
        served, serving_loss = trainer.model, None
        if config.qlora:
            # vLLM serves the adapter on the full-precision base, not on the nf4 weights it was trained
            # against; on a small base that gap is large, so measure (and sample) what users will get.
            served = serving_model(base, adapter_dir, device=trainer.args.device)
            serving_loss = val_loss_of(served, trainer.get_eval_dataloader()) if val_ex else None
        if not main:
            return None
        check_saved_adapter(adapter_dir, base_names)
        samples = side_by_side(served, tokenizer, val_ex or train_ex, config.samples)
        result = TrainResult(
            name=config.name, version=None, adapter_dir=str(adapter_dir), registry_path=None,
            steps=trainer.state.global_step, best_step=best_step(trainer.state),
            train_loss_first=progress.train_curve[0][1] if progress.train_curve else None,
            train_loss_last=progress.train_curve[-1][1] if progress.train_curve else None,
            val_loss=val_loss, base_val_loss=base_loss, serving_val_loss=serving_loss,
            processes=processes.num_processes, examples=len(train_ex),
            dropped_overlong=len(dropped),
            wall_time_s=round(time.perf_counter() - started, 1), peak_rss_mb=peak_rss_mb(),
            cpu_time_s=cpu_time_s(),
            tokens_per_s=round(progress.tokens_per_s, 1), mlflow_run_id=tracker.run_id, samples=samples,
        )
        for key in ("val_loss", "base_val_loss", "serving_val_loss", "wall_time_s", "peak_rss_mb", "tokens_per_s"):
            if getattr(result, key) is not None:
                tracker.metric(f"final_{key}", getattr(result, key), result.steps)
        atomic_write_json(run_dir / "result.json", result)
        tracker.artifacts(adapter_dir, "adapter")
        if config.register_version:
            result = register(config, settings, inspect_base(base), result, progress, len(val_ex), dropped,
                              fail_before_rename)
        tracker.end()
        return result
    except BaseException:
        tracker.end("FAILED" if not isinstance(sys.exc_info()[1], KeyboardInterrupt) else "KILLED")
        raise


def register(config: TrainConfig, settings: Settings, base: Any, result: TrainResult, progress: Any, n_val: int,
             dropped: list[str], fail_before_rename: Callable[[], None] | None) -> TrainResult:
    """A new immutable version, or nothing at all: a failed save (disk full, kill) leaves no version."""
    card = build_card(config, base, result, progress, n_val, dropped)
    try:
        resolved = Registry(settings.registry_dir).register(config.name, Path(result.adapter_dir), card,
                                                            fail_before_rename=fail_before_rename)
    except OSError as exc:
        raise RegistryError(f"could not register {config.name!r}: {exc.strerror or exc} (nothing was registered)",
                            hint="free disk space, then rerun with --resume to skip the finished training") from None
    return result.model_copy(update={"version": resolved.version, "registry_path": str(resolved.path)})


def load_examples(config: TrainConfig, tokenizer: Any) -> tuple[list[Any], list[Any], list[str]]:
    """Validated examples with the over-long policy applied to both splits."""
    train_ex, val_ex = dataset.prepare(config.train, config.val, system_prompt=config.system_prompt,
                                       allow_leakage=config.allow_leakage)
    train_ex, over = dataset.apply_max_length(train_ex, dataset.token_lengths(tokenizer, train_ex),
                                              config.max_length, config.on_overlong)
    if val_ex:
        val_ex, val_over = dataset.apply_max_length(val_ex, dataset.token_lengths(tokenizer, val_ex),
                                                    config.max_length, config.on_overlong)
        over += val_over
    return train_ex, val_ex, over


def start_run_dir(run_dir: Path, config: TrainConfig, *, clean: bool = True) -> str | None:
    """The checkpoint to resume from (with --resume), else a clean run folder (`clean`: this process
    empties it; the other processes of a multi-process run leave it to the main one)."""
    from transformers.trainer_utils import get_last_checkpoint

    checkpoints = run_dir / "checkpoints"
    if config.resume:
        last = get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None
        if last is None:
            raise ConfigError(f"--resume: no checkpoint of {config.name!r} under {checkpoints}",
                              hint="run without --resume to start afresh")
        return last
    if not clean:
        return None
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    atomic_write_json(run_dir / "config.json", config.model_dump(mode="json"))
    return None


def build_trainer(config: TrainConfig, model: Any, tokenizer: Any, train_ex: list[Any], val_ex: list[Any],
                  run_dir: Path, tracker: Tracker, console: Console, show_progress: bool) -> tuple[Any, Any]:
    from datasets import Dataset
    from lorafleet.train.progress import ProgressAndTracking
    from lorafleet.train.trainer import LeanSFTTrainer
    from transformers import EarlyStoppingCallback, PrinterCallback
    from trl import SFTConfig

    has_val = bool(val_ex)
    args = SFTConfig(
        output_dir=str(run_dir / "checkpoints"), seed=config.seed, data_seed=config.seed,
        per_device_train_batch_size=config.batch_size, per_device_eval_batch_size=max(config.batch_size, 8),
        gradient_accumulation_steps=config.grad_accum, learning_rate=config.lr, num_train_epochs=config.epochs,
        max_steps=config.max_steps or -1, warmup_steps=config.warmup_ratio, lr_scheduler_type="linear",
        logging_steps=max(1, min(5, config.eval_steps)), eval_strategy="steps" if has_val else "no",
        eval_steps=config.eval_steps, save_strategy="steps", save_steps=config.eval_steps, save_total_limit=2,
        load_best_model_at_end=has_val, metric_for_best_model="eval_loss", greater_is_better=False,
        report_to="none", disable_tqdm=True, max_length=config.max_length, truncation_mode="keep_start",
        completion_only_loss=True, packing=False, prediction_loss_only=True, dataloader_num_workers=0,
        bf16=False, fp16=False, use_cpu=on_cpu(),
        # Explicit: TRL's SFTConfig turns checkpointing on by default, which we only want when asked.
        gradient_checkpointing=config.gradient_checkpointing,
        gradient_checkpointing_kwargs=dict(CHECKPOINTING_KWARGS),
    )
    progress = ProgressAndTracking(tracker, console=console, show=show_progress)
    callbacks = [progress] + ([EarlyStoppingCallback(early_stopping_patience=config.patience)] if has_val else [])
    trainer = LeanSFTTrainer(
        model=model, args=args, processing_class=tokenizer,
        train_dataset=Dataset.from_list([e.row() for e in train_ex]),
        eval_dataset=Dataset.from_list([e.row() for e in val_ex]) if has_val else None,
        callbacks=callbacks,
    )
    # Progress is ours (rich, stderr); the default printer would write log dicts to stdout (breaks --json).
    trainer.remove_callback(PrinterCallback)
    return trainer, progress


def save_adapter(model: Any, final: Path) -> None:
    """save_pretrained into a temp folder beside `final`, then rename: never a half-written adapter folder."""
    tmp = final.parent / f".{final.name}-{uuid.uuid4().hex[:8]}"
    try:
        model.save_pretrained(str(tmp), safe_serialization=True)
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    except OSError as exc:
        raise RegistryError(f"could not save the adapter under {final.parent}: {exc.strerror or exc}",
                            hint="free disk space, then rerun with --resume") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def final_val_loss(trainer: Any) -> float:
    """The kept model's val loss. With the best checkpoint reloaded it is that evaluation's loss, so
    no second pass over val (the same weights, data and code give the same number)."""
    state = trainer.state
    if trainer.args.load_best_model_at_end and state.best_model_checkpoint and state.best_metric is not None:
        return float(state.best_metric)
    return float(trainer.evaluate()["eval_loss"])


def best_step(state: Any) -> int | None:
    ckpt = getattr(state, "best_model_checkpoint", None)
    if not ckpt:
        return None
    try:
        return int(str(ckpt).rsplit("-", 1)[-1])
    except ValueError:
        return None


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def cpu_time_s() -> float:
    """CPU seconds of this process (all threads): a load-independent cost figure on a shared machine."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return round(usage.ru_utime + usage.ru_stime, 1)
