"""`TrainConfig`: every training knob, validated, loadable from YAML, overridable from the CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lorafleet.adapter_files import VLLM_LORA_RANKS
from lorafleet.errors import ConfigError
from lorafleet.refs import validate_name

DEFAULT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
MLP_TARGETS = ["gate_proj", "up_proj", "down_proj"]
# What our own engine is started with (--max-lora-rank 16): higher ranks would not load there.
SERVABLE_RANKS = tuple(r for r in VLLM_LORA_RANKS if r <= 16)


class TrainConfig(BaseModel):
    """One training run. Field names are the CLI flags (`--max-length` ↔ `max_length`)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Adapter name in the registry.")
    train: Path = Field(description="Training JSONL (chat, alpaca or prompt/completion).")
    val: Path | None = Field(default=None, description="Validation JSONL, never trained on; early stopping uses it.")
    base: Path | None = Field(default=None, description="Base HF folder; default: the embedded base.")
    qlora: bool = Field(default=False, description="Load the base in 4-bit nf4 (bitsandbytes) and train LoRA on it.")
    rank: int = Field(default=16, description="LoRA rank; vLLM serves 8 or 16 with our engine settings.")
    alpha: float | None = Field(default=None, description="LoRA alpha; default 2 × rank.")
    dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: list(DEFAULT_TARGETS))
    epochs: float = Field(default=1.0, gt=0)
    max_steps: int | None = Field(default=None, gt=0, description="Stop after this many steps (overrides epochs).")
    lr: float = Field(default=2e-4, gt=0, lt=1)
    batch_size: int = Field(default=4, ge=1)
    grad_accum: int = Field(default=1, ge=1)
    warmup_ratio: float = Field(default=0.05, ge=0, lt=1)
    gradient_checkpointing: bool = Field(
        default=False, description="Recompute activations in backward: far less memory on big bases, ~30% slower.")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        default="auto", description="Compute dtype: auto is bf16 on a CUDA GPU that has it, else fp32 (CPU).")
    serving_check: bool = Field(
        default=True, description="QLoRA: also measure the adapter as served (on the full-precision weights of "
                                  "the nf4 twin; bf16 on a GPU): a second copy of the base in memory.")
    # Speed levers (issue 19; docs/benchmarks.md ## Training measures each against plain TRL).
    padding_free: bool = Field(
        default=False, description="Flatten each batch into one row without pad tokens (position_ids; attention "
                                   "stays inside each example, so the same tokens are scored).")
    group_by_length: bool = Field(
        default=False, description="Batch examples of similar length (less padding); batches still come shuffled.")
    packing: bool = Field(
        default=False, description="Pack several examples into each max_length row (TRL's best-fit `bfd`, no "
                                   "attention across examples): more examples per step.")
    threads: int | None = Field(default=None, ge=1, description="torch intra-op threads; default: torch's own.")
    dataloader_workers: int = Field(default=0, ge=0, description="Batch-collating processes (0: in the trainer).")
    max_length: int = Field(default=256, ge=8)
    on_overlong: Literal["drop", "truncate", "error"] = "drop"
    allow_leakage: bool = Field(default=False, description="Train even if val rows also appear in train.")
    allow_held_out: bool = Field(
        default=False, description="Train even if records match held-out (val/test/eval/review) examples; "
                                   "the card records it.")
    eval_steps: int = Field(default=25, ge=1, description="Validate (and checkpoint) every N steps.")
    patience: int = Field(default=3, ge=1, description="Early stopping: evaluations without improvement.")
    system_prompt: str | None = Field(default=None, description="Prepended to records without a system turn.")
    seed: int = 0
    resume: bool = Field(default=False, description="Continue the latest run of this name (same config, same "
                                                     "MLflow run) from its last checkpoint.")
    samples: int = Field(default=3, ge=0, description="Side-by-side generations printed at the end.")
    track: bool = Field(default=True, description="Log the run to the local MLflow store.")
    register_version: bool = Field(default=True, description="Register the adapter as a new version.")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return validate_name(value)

    @field_validator("rank")
    @classmethod
    def _rank(cls, value: int) -> int:
        if value not in SERVABLE_RANKS:
            allowed = ", ".join(map(str, SERVABLE_RANKS))
            raise ValueError(f"rank {value} cannot be served by vLLM here; use one of {allowed}")
        return value

    @field_validator("target_modules")
    @classmethod
    def _targets(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("give at least one target module, e.g. q_proj")
        return value

    @model_validator(mode="after")
    def _defaults(self) -> TrainConfig:
        if self.alpha is None:
            self.alpha = float(2 * self.rank)
        return self

    def hyperparameters(self) -> dict[str, Any]:
        """What goes into the card's `training` and MLflow params."""
        return self.model_dump(mode="json", exclude={"name", "train", "val", "base", "resume", "samples",
                                                     "track", "register_version", "precision",
                                                     "serving_check", "threads", "dataloader_workers"})


def config_error(exc: ValidationError, source: str = "flag") -> ConfigError:
    """A pydantic error as one line naming the flag (or YAML key) to change."""
    err = exc.errors()[0]
    field = ".".join(str(p) for p in err["loc"]) or "(root)"
    where = f"--{field.replace('_', '-')}" if source == "flag" else f"{source}: field '{field}'"
    msg = str(err["msg"]).removeprefix("Value error, ")
    return ConfigError(f"{where}: {msg}", hint="see `lorafleet train --help`")


def build_config(values: dict[str, Any], *, source: str = "flag") -> TrainConfig:
    try:
        return TrainConfig.model_validate(values)
    except ValidationError as exc:
        raise config_error(exc, source) from None


def load_config(path: Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """A YAML file holding TrainConfig fields, with CLI flags (not None) on top; relative paths
    are resolved against the YAML file's folder."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read YAML ({exc.__class__.__name__})", hint="check --config") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of TrainConfig fields", hint="see examples/demo_adapters.yaml")
    raw = resolve_paths(raw, path.parent)
    raw.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return build_config(raw, source=str(path))


def resolve_paths(raw: dict[str, Any], folder: Path) -> dict[str, Any]:
    out = dict(raw)
    for key in ("train", "val", "base"):
        if isinstance(out.get(key), str) and not Path(out[key]).is_absolute():
            out[key] = str((folder / out[key]).resolve())
    return out
