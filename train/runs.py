"""Run folders: every training run keeps its own, so a new run never deletes an earlier one.

    <data_dir>/runs/<name>/latest                 the newest run's id (text), what --resume continues
    <data_dir>/runs/<name>/<run-id>/run.json      RunInfo: id, created_at, data sha256s, MLflow run id
    <data_dir>/runs/<name>/<run-id>/config.json   the resolved TrainConfig; --resume must match it
    <data_dir>/runs/<name>/<run-id>/checkpoints/  Trainer checkpoints (what --resume restarts from)
    <data_dir>/runs/<name>/<run-id>/adapter/      the saved adapter, result.json beside it

A run id is the UTC start time plus a short random part (`20250101T120000Z-3fa2c1`): sortable, unique.
"""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lorafleet.train.config import TrainConfig
from pydantic import BaseModel, Field, ValidationError

from lorafleet.errors import ConfigError
from lorafleet.fsutil import atomic_write_json, atomic_write_text, sha256_file

LATEST = "latest"
RUN_FILE = "run.json"
CONFIG_FILE = "config.json"
# Flags that change what is printed, not what is trained: --resume may differ in them.
NOT_COMPARED = frozenset({"resume", "samples"})


class RunInfo(BaseModel):
    """What a run folder records about its run besides the config."""

    run_id: str
    name: str
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    data_sha256: dict[str, str] = Field(default_factory=dict, description="train/val file → sha256 at the start.")
    mlflow_run_id: str | None = None


def new_run_id(now: datetime | None = None) -> str:
    """UTC start time + 6 random hex digits."""
    return f"{(now or datetime.now(UTC)).strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(3)}"


def name_dir(runs_root: Path, name: str) -> Path:
    return Path(runs_root) / name


def data_hashes(config: TrainConfig) -> dict[str, str]:
    """sha256 of the train (and val) file: a resumed run must train on the same bytes."""
    found = {"train": sha256_file(config.train)}
    if config.val is not None:
        found["val"] = sha256_file(config.val)
    return found


def create_run(runs_root: Path, config: TrainConfig, run_id: str) -> Path:
    """A fresh folder for `run_id` with its config and RunInfo, and `latest` pointing at it."""
    run_dir = name_dir(runs_root, config.name) / run_id
    run_dir.mkdir(parents=True, exist_ok=False)
    atomic_write_json(run_dir / CONFIG_FILE, config.model_dump(mode="json"))
    atomic_write_json(run_dir / RUN_FILE, RunInfo(run_id=run_id, name=config.name, data_sha256=data_hashes(config)))
    atomic_write_text(name_dir(runs_root, config.name) / LATEST, f"{run_id}\n")
    return run_dir


def latest_run(runs_root: Path, name: str) -> Path:
    """The folder `latest` points at; a ConfigError naming the fix when there is none."""
    pointer = name_dir(runs_root, name) / LATEST
    fix = "run without --resume to start a new run"
    if not pointer.is_file():
        raise ConfigError(f"--resume: no earlier run of {name!r} under {pointer.parent}", hint=fix)
    run_id = pointer.read_text(encoding="utf-8").strip()
    run_dir = pointer.parent / run_id
    if not run_id or "/" in run_id or not (run_dir / CONFIG_FILE).is_file():
        raise ConfigError(f"--resume: {pointer} names run {run_id!r}, which has no {CONFIG_FILE}", hint=fix)
    return run_dir


def read_info(run_dir: Path) -> RunInfo:
    try:
        return RunInfo.model_validate_json((run_dir / RUN_FILE).read_bytes())
    except (OSError, ValidationError) as exc:
        raise ConfigError(f"--resume: {run_dir / RUN_FILE} is unreadable ({type(exc).__name__})",
                          hint="run without --resume to start a new run") from None


def config_differences(stored: dict[str, Any], config: TrainConfig) -> list[str]:
    """`field: run X, now Y` for every compared field that differs from the stored resolved config."""
    now = config.model_dump(mode="json")
    out = []
    for key in sorted((set(stored) | set(now)) - NOT_COMPARED):
        if stored.get(key) != now.get(key):
            out.append(f"{key}: run {json.dumps(stored.get(key))}, now {json.dumps(now.get(key))}")
    return out


def check_resume(run_dir: Path, config: TrainConfig) -> RunInfo:
    """The run's RunInfo when `config` (and the data files' bytes) match what the run started with."""
    try:
        stored = json.loads((run_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--resume: {run_dir / CONFIG_FILE} is unreadable ({type(exc).__name__})",
                          hint="run without --resume to start a new run") from None
    info = read_info(run_dir)
    diffs = config_differences(stored if isinstance(stored, dict) else {}, config)
    files = {"train": config.train, "val": config.val}
    # A val file added or dropped shows as the `val` field above; here: the same path, other bytes.
    diffs += [f"{split} file {files[split]}: content changed since the run started"
              for split, digest in sorted(data_hashes(config).items())
              if split in info.data_sha256 and info.data_sha256[split] != digest]
    if diffs:
        raise ConfigError(f"--resume: the config differs from run {info.run_id} of {config.name!r}: "
                          + "; ".join(diffs),
                          hint=f"resume with the run's settings ({run_dir / CONFIG_FILE}), "
                               "or drop --resume to start a new run")
    return info


def record_mlflow_run(run_dir: Path, mlflow_run_id: str | None) -> None:
    """Store the MLflow run id so --resume continues the same MLflow run."""
    if mlflow_run_id is None:
        return
    info = read_info(run_dir)
    if info.mlflow_run_id != mlflow_run_id:
        atomic_write_json(run_dir / RUN_FILE, info.model_copy(update={"mlflow_run_id": mlflow_run_id}))
