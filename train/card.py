"""The card a trained version is registered with: base, data, every hyperparameter, metrics."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any

from lorafleet.train.config import TrainConfig

from lorafleet.base_model import BaseInfo
from lorafleet.card import AdapterCard, BaseModelRef, DatasetFile, LoraInfo
from lorafleet.fsutil import sha256_file

LIBRARIES = ("lorafleet", "torch", "transformers", "peft", "trl", "accelerate", "datasets", "bitsandbytes",
             "mlflow-skinny")


def library_versions() -> dict[str, str]:
    found = {}
    for name in LIBRARIES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def dataset_files(config: TrainConfig, n_train: int, n_val: int) -> list[DatasetFile]:
    files = [DatasetFile(path=str(Path(config.train).resolve()), sha256=sha256_file(config.train), split="train",
                         records=n_train)]
    if config.val is not None:
        files.append(DatasetFile(path=str(Path(config.val).resolve()), sha256=sha256_file(config.val), split="val",
                                 records=n_val))
    return files


def curve_summary(curve: list[tuple[int, float]]) -> dict[str, Any]:
    """First/min/last of a loss curve, and up to 20 evenly spaced points."""
    if not curve:
        return {}
    stride = max(1, len(curve) // 20)
    best = min(curve, key=lambda p: p[1])
    return {"first": curve[0][1], "last": curve[-1][1], "min": best[1], "min_step": best[0],
            "points": [[s, round(v, 4)] for s, v in curve[::stride]]}


def build_card(config: TrainConfig, base: BaseInfo, result: Any, progress: Any, n_val: int,
               dropped: list[str]) -> AdapterCard:
    """`result` is the recipe's TrainResult, `progress` its callback holding the loss curves."""
    return AdapterCard(
        name=config.name, version="v1", source="trained",
        base=BaseModelRef(id=base.model_id, path=str(Path(base.path).resolve()), weights_sha256=base.weights_sha256),
        lora=LoraInfo(rank=config.rank, alpha=float(config.alpha or 2 * config.rank),
                      target_modules=sorted(config.target_modules), dropout=config.dropout,
                      quantization="nf4" if config.qlora else None),
        trained_on=getattr(result, "trained_on", None),
        dataset=dataset_files(config, result.examples, n_val),
        training={**config.hyperparameters(), "steps": result.steps, "processes": result.processes,
                  "dropped_overlong": len(dropped)},
        metrics={
            "train_loss": curve_summary(progress.train_curve),
            "val_loss": curve_summary(progress.val_curve),
            "final_val_loss": result.val_loss, "base_val_loss": result.base_val_loss,
            "serving_val_loss": result.serving_val_loss,
            "best_step": result.best_step, "wall_time_s": result.wall_time_s,
            "peak_rss_mb": result.peak_rss_mb, "cpu_time_s": result.cpu_time_s, "tokens_per_s": result.tokens_per_s,
            "samples": [s.model_dump() for s in result.samples],
        },
        library_versions=library_versions(),
        mlflow_run_id=result.mlflow_run_id,
        held_out=dict(result.held_out),
    )
