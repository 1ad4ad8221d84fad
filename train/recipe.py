"""The training recipe, top to bottom: setup → data → fit → check → register.

    from lorafleet.train.recipe import train
    result = train(TrainConfig(name="support-intents", train=Path("…/train.jsonl"), val=…), settings)

TRL `SFTTrainer` + PEFT LoRA (QLoRA: bitsandbytes nf4), loss on the answer tokens only
(conversational prompt/completion rows + `completion_only_loss`), early stopping on val loss
with the best checkpoint kept, MLflow (a tracking server or the local store), a folder per run with
resumable checkpoints, and the held-out guard before any model is loaded.
"""

from __future__ import annotations

import resource
import shutil
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorafleet.train import dataset, runs
from lorafleet.train.card import build_card
from lorafleet.train.config import TrainConfig
from lorafleet.train.efficacy import Sample, base_val_loss, serving_model, side_by_side, val_loss_of
from lorafleet.train.model import (
    CHECKPOINTING_KWARGS,
    check_base,
    load_base,
    load_tokenizer,
    lora_config,
    on_cpu,
    qlora_on_twin,
)
from lorafleet.train.precision import use_bf16
from lorafleet.train.servable import check_saved_adapter, check_targets, module_names
from lorafleet.train.settings import tracking_uri
from lorafleet.train.tracking import Tracker
from pydantic import BaseModel
from rich.console import Console

from lorafleet.base_model import inspect_base
from lorafleet.base_variants import ensure_nf4, trained_on
from lorafleet.card import TrainedOn
from lorafleet.config import Settings
from lorafleet.errors import ConfigError, RegistryError
from lorafleet.fsutil import atomic_write_json
from lorafleet.registry import Registry

# Near-duplicate threshold (MinHash Jaccard of word 3-shingles) for the held-out guard; matches listed on the card.
HELD_OUT_THRESHOLD = 0.8
HELD_OUT_LISTED = 20


class TrainResult(BaseModel):
    """What a run produced; `version` is None when registration was switched off."""

    name: str
    version: str | None
    run_dir: str = ""  # this run's folder under data_dir/runs/<name>/ (lorafleet.train.runs)
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
    held_out: dict[str, Any] = {}  # the guard's check, as the card records it
    trained_on: TrainedOn | None = None  # the base variant trained on (QLoRA: the nf4 twin), as the card records it


def train(config: TrainConfig, settings: Settings, *, console: Console | None = None, show_progress: bool = True,
          fail_before_rename: Callable[[], None] | None = None,
          checks: Callable[[RegistrationCheck], dict[str, Any]] | None = None) -> TrainResult | None:
    """Train one adapter and register it as a new immutable version (see the module docstring).

    Each run gets its own folder (lorafleet.train.runs); --resume continues the latest one.
    Under `torchrun`/`accelerate launch` every process trains its share of each batch; only the main
    process creates the run folder, tracks, saves and registers, and the others return None.
    `checks` (the CLI's fidelity check, which needs the serving engine) runs before registering; it raises
    to refuse, and the card fields it returns go on the card."""
    console = console or Console(stderr=True)
    started = time.perf_counter()
    # The data checks come first, the held-out guard among them: a refused run loads no model.
    train_ex, val_ex = dataset.prepare(config.train, config.val, system_prompt=config.system_prompt,
                                       allow_leakage=config.allow_leakage)

    from accelerate import PartialState

    # One process unless a launcher (torchrun, accelerate launch) started several; on a machine
    # without an accelerator accelerate only forms a CPU (gloo) group when told it is on CPU.
    processes = PartialState(cpu=on_cpu())
    main = processes.is_main_process
    # Every process checks (no collective step, so a refusal stops each one alike, none left waiting).
    held_out = check_held_out(config, settings.data_dir, console if main else None)
    runs_root = settings.data_dir / "runs"
    resumed = runs.check_resume(runs.latest_run(runs_root, config.name), config) if config.resume else None

    base = Path(config.base or settings.base_dir)
    check_base(base)
    bf16 = use_bf16(config.precision)  # before any load: --precision bf16 without a bf16 GPU is refused here
    # The base variant the adapter is trained on, and so served on: a QLoRA run writes the base's nf4
    # twin when it is missing (lorafleet.base_variants), once, before any process loads a model.
    if config.qlora and main:
        ensure_nf4(base, settings.data_dir)
    processes.wait_for_everyone()
    trained = trained_on(base, qlora=config.qlora, data_dir=settings.data_dir)
    tokenizer = load_tokenizer(base)
    train_ex, val_ex, dropped = apply_max_lengths(config, tokenizer, train_ex, val_ex)
    run_dir, checkpoint = open_run(runs_root, config, resumed, processes)

    import torch
    from peft import get_peft_model

    setup_compute(config)
    torch.manual_seed(config.seed)
    # QLoRA on CPU trains plain LoRA on the nf4 twin: the very weights bitsandbytes computes with (qlora_on_twin).
    on_twin = qlora_on_twin(config.qlora)
    model = load_base(Path(trained.path or base) if on_twin else base, qlora=config.qlora and not on_twin,
                      gradient_checkpointing=config.gradient_checkpointing, bf16=bf16)
    base_names = module_names(model)
    check_targets(config.target_modules, base_names)
    model = get_peft_model(model, lora_config(config))

    tracker = Tracker(settings.data_dir / "mlflow" if config.track and main else None, run_name=config.name,
                      uri=tracking_uri(settings), run_id=resumed.mlflow_run_id if resumed else None)
    if tracker.note:
        console.print(f"[yellow]warning:[/] {tracker.note}")
    if main:
        runs.record_mlflow_run(run_dir, tracker.run_id)
    try:
        tracker.params({**config.hyperparameters(), "train": str(config.train), "val": str(config.val),
                        "base": str(base)})
        trainer, progress = build_trainer(config, model, tokenizer, train_ex, val_ex, run_dir, tracker,
                                          console, show_progress and main, bf16=bf16)
        trainer.train(resume_from_checkpoint=checkpoint)
        # Evaluations are collective under a process group: every process takes part in each one.
        val_loss = final_val_loss(trainer) if val_ex else None
        base_loss = base_val_loss(trainer)
        adapter_dir = run_dir / "adapter"
        if main:
            save_adapter(trainer.model, adapter_dir)
        processes.wait_for_everyone()
        served, serving_loss = trainer.model, None
        if on_twin:  # trained on the twin's own weights: measured as served is measured as trained
            serving_loss = val_loss
        elif config.qlora and config.serving_check:
            # The gateway serves a QLoRA adapter on the nf4 twin (its matched base): measure (and sample)
            # the adapter there, in plain float weights, as users will get it (bf16 where training was).
            served = serving_model(Path(trained.path or base), adapter_dir, device=trainer.args.device, bf16=bf16)
            serving_loss = val_loss_of(served, trainer.get_eval_dataloader()) if val_ex else None
        if not main:
            return None
        check_saved_adapter(adapter_dir, base_names)
        samples = side_by_side(served, tokenizer, val_ex or train_ex, config.samples)
        result = TrainResult(
            name=config.name, version=None, run_dir=str(run_dir), adapter_dir=str(adapter_dir), registry_path=None,
            steps=trainer.state.global_step, best_step=best_step(trainer.state),
            train_loss_first=progress.train_curve[0][1] if progress.train_curve else None,
            train_loss_last=progress.train_curve[-1][1] if progress.train_curve else None,
            val_loss=val_loss, base_val_loss=base_loss, serving_val_loss=serving_loss,
            processes=processes.num_processes, examples=len(train_ex),
            dropped_overlong=len(dropped),
            wall_time_s=round(time.perf_counter() - started, 1), peak_rss_mb=peak_rss_mb(),
            cpu_time_s=cpu_time_s(),
            tokens_per_s=round(progress.tokens_per_s, 1), mlflow_run_id=tracker.run_id, samples=samples,
            held_out=held_out, trained_on=trained,
        )
        for key in ("val_loss", "base_val_loss", "serving_val_loss", "wall_time_s", "peak_rss_mb", "tokens_per_s"):
            if getattr(result, key) is not None:
                tracker.metric(f"final_{key}", getattr(result, key), result.steps)
        atomic_write_json(run_dir / "result.json", result)
        tracker.artifacts(adapter_dir, "adapter")
        if config.register_version:
            fields = checks(RegistrationCheck(name=config.name, adapter_dir=adapter_dir, base=base,
                                              qlora=config.qlora, probes=val_ex)) if checks else {}
            result = register(config, settings, inspect_base(base), result, progress, len(val_ex), dropped,
                              fail_before_rename, card_fields=fields)
        tracker.end()
        return result
    except BaseException:
        tracker.end("FAILED" if not isinstance(sys.exc_info()[1], KeyboardInterrupt) else "KILLED")
        raise


@dataclass
class RegistrationCheck:
    """What a check run before registering gets: the saved adapter, its base, and val examples to probe with."""

    name: str
    adapter_dir: Path
    base: Path
    qlora: bool
    probes: list[Any]


def check_held_out(config: TrainConfig, data_dir: Path, console: Console | None) -> dict[str, Any]:
    """Refuse training records that match held-out examples (HeldOutError, exit 1) unless --allow-held-out;
    returns what the card records. The run's --val file joins the index first: it is held out too."""
    from lorafleet.heldout import HeldOutIndex, refusal

    index = HeldOutIndex(data_dir)
    if config.val is not None:
        index.add_file(config.val, "val", label=f"val of {config.name}")
    # Train/val overlap of this run is --allow-leakage's to allow; the guard then skips this val file.
    exclude = [config.train, *([config.val] if config.allow_leakage and config.val is not None else [])]
    matches = index.check_file(config.train, threshold=HELD_OUT_THRESHOLD, exclude_sources=exclude)
    if console is not None and index.note:
        console.print(f"[yellow]note:[/] {index.note}")
    if matches and not config.allow_held_out:
        raise refusal(matches)
    if matches and console is not None:
        console.print(f"[yellow]warning:[/] {len(matches)} training record(s) match held-out examples; "
                      "training on them anyway (--allow-held-out, recorded on the card)")
    return {"index_version": index.version(), "matches": len(matches), "allowed": config.allow_held_out,
            "threshold": HELD_OUT_THRESHOLD, "found": [m.line() for m in matches[:HELD_OUT_LISTED]]}


def open_run(runs_root: Path, config: TrainConfig, resumed: runs.RunInfo | None,
             processes: Any) -> tuple[Path, str | None]:
    """(run folder, checkpoint to resume from): the resumed run's, or a new folder that the main
    process creates under an id it decides and shares, so every process writes to the same one."""
    if resumed is not None:
        from transformers.trainer_utils import get_last_checkpoint

        run_dir = runs.name_dir(runs_root, config.name) / resumed.run_id
        checkpoints = run_dir / "checkpoints"
        last = get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None
        if last is None:
            raise ConfigError(f"--resume: run {resumed.run_id} of {config.name!r} has no checkpoint under "
                              f"{checkpoints}", hint="run without --resume to start a new run")
        return run_dir, last
    run_id = runs.new_run_id() if processes.is_main_process else None
    if processes.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        run_id = broadcast_object_list([run_id], from_process=0)[0]
    assert run_id is not None
    if processes.is_main_process:
        runs.create_run(runs_root, config, run_id)
    processes.wait_for_everyone()
    return runs.name_dir(runs_root, config.name) / run_id, None


def register(config: TrainConfig, settings: Settings, base: Any, result: TrainResult, progress: Any, n_val: int,
             dropped: list[str], fail_before_rename: Callable[[], None] | None,
             card_fields: dict[str, Any] | None = None) -> TrainResult:
    """A new immutable version, or nothing at all: a failed save (disk full, kill) leaves no version."""
    card = build_card(config, base, result, progress, n_val, dropped).model_copy(update=card_fields or {})
    try:
        resolved = Registry(settings.registry_dir).register(config.name, Path(result.adapter_dir), card,
                                                            fail_before_rename=fail_before_rename)
    except OSError as exc:
        raise RegistryError(f"could not register {config.name!r}: {exc.strerror or exc} (nothing was registered)",
                            hint="free disk space, then rerun with --resume to skip the finished training") from None
    return result.model_copy(update={"version": resolved.version, "registry_path": str(resolved.path)})


def apply_max_lengths(config: TrainConfig, tokenizer: Any, train_ex: list[Any],
                      val_ex: list[Any]) -> tuple[list[Any], list[Any], list[str]]:
    """The over-long policy applied to both splits; (train, val, what was over-long)."""
    train_ex, over = dataset.apply_max_length(train_ex, dataset.token_lengths(tokenizer, train_ex),
                                              config.max_length, config.on_overlong)
    if val_ex:
        val_ex, val_over = dataset.apply_max_length(val_ex, dataset.token_lengths(tokenizer, val_ex),
                                                    config.max_length, config.on_overlong)
        over += val_over
    return train_ex, val_ex, over


def build_trainer(config: TrainConfig, model: Any, tokenizer: Any, train_ex: list[Any], val_ex: list[Any],
                  run_dir: Path, tracker: Tracker, console: Console, show_progress: bool,
                  bf16: bool = False) -> tuple[Any, Any]:
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
        report_to="none", disable_tqdm=True, truncation_mode="keep_start",
        completion_only_loss=True, prediction_loss_only=True, bf16=bf16, fp16=False, use_cpu=on_cpu(),
        **speed_args(config),
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


def speed_args(config: TrainConfig) -> dict[str, Any]:
    """The SFTConfig fields of the config's speed levers (measured in docs/benchmarks.md ## Training)."""
    # Padding-free without packing: TRL refuses a max_length (it would not enforce it), so it needs
    # examples already within it: the over-long policy has dropped or refused the others, not kept them.
    padding_free = config.padding_free and (config.packing or config.on_overlong != "truncate")
    unbounded = padding_free and not config.packing
    return {"max_length": None if unbounded else config.max_length, "padding_free": padding_free,
            "packing": config.packing, "packing_strategy": "bfd",
            "train_sampling_strategy": "group_by_length" if config.group_by_length else "random",
            "dataloader_num_workers": config.dataloader_workers}


def setup_compute(config: TrainConfig) -> None:
    """Process-wide compute settings, before the model is built."""
    if config.threads:
        import torch

        torch.set_num_threads(config.threads)


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
